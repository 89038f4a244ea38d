"""Low-rank decomposition: the truncated SVD of W as two thin linear layers, ``W ≈ B·A``."""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from vcon.compression.base import Footprint, ModuleCompression, Packed, register
from vcon.errors import require
from vcon.method.blend import Beta
from vcon.method.gradual import GradualBranches
from vcon.schema import check_fields, integer, number, setting


class LowRankLinear(nn.Module):
    """``x ↦ B(A x) + b`` with ``A`` (rank × in) and ``B`` (out × rank): two ``nn.Linear``, ``down`` (A, no bias)
    and ``up`` (B and the bias b). What a low-rank layer is once finalized (``Controller.finalize``), and the
    exported runtime."""

    execution = "two dense matmuls (the factors)"

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features  # of the layer it stands for, as nn.Linear
        self.down = nn.Linear(in_features, rank, bias=False)  # A
        self.up = nn.Linear(rank, out_features, bias=bias)  # B

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @property
    def bias(self) -> torch.Tensor | None:
        return self.up.bias

    def dense_weight(self) -> torch.Tensor:
        """``B·A`` as one (out × in) matrix: VCON blends it with the original weight during the transition."""
        return self.up.weight @ self.down.weight


@register
@dataclasses.dataclass
class LowRank(ModuleCompression):
    """``rank``: an integer, or a float in (0, 1] meaning that fraction of each layer's full rank min(out, in)."""

    name = "lrd"
    rank: int | float = setting(integer(1) | number(above=0, high=1, what="a fraction of full rank"), 16)

    def __post_init__(self) -> None:
        check_fields(self, "compression")

    def describe(self) -> str:
        return f"low rank {self.rank}"

    def rank_for(self, out_features: int, in_features: int, strength: float = 1.0) -> int:
        """The target rank of an out × in layer; at ``strength`` s < 1 (gradual rank reduction) the rank on the way
        there, ``full − s·(full − target)``."""
        full = min(out_features, in_features)
        target = max(1, round(self.rank * full)) if isinstance(self.rank, float) else self.rank
        return target if strength >= 1 else round(full - strength * (full - target))

    def ramp_figures(self, strength: float, shapes: list[torch.Size]) -> dict[str, float]:
        return {"rank": sum(self.rank_for(*shape, strength) for shape in shapes) / max(len(shapes), 1)}

    def check(self, layers: dict[str, nn.Linear]) -> None:
        for name, layer in layers.items():
            full = min(layer.out_features, layer.in_features)
            require(self.rank_for(layer.out_features, layer.in_features) <= full, "compression.rank", self.rank,
                    f"at most {full}, the full rank of layer {name} ({layer.out_features}x{layer.in_features})")

    @torch.no_grad()
    def build(self, linear: nn.Linear) -> LowRankLinear:
        rank = self.rank_for(linear.out_features, linear.in_features)
        u, s, vh = torch.linalg.svd(linear.weight.float(), full_matrices=False)
        g = LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None)
        g.to(device=linear.weight.device, dtype=linear.weight.dtype)
        g.down.weight.copy_(vh[:rank])  # A = V_r^T
        g.up.weight.copy_(u[:, :rank] * s[:rank])  # B = U_r diag(S_r)
        if linear.bias is not None:
            g.up.bias.copy_(linear.bias)
        return g

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        out_features, in_features = weight_shape
        return Footprint(self.rank_for(out_features, in_features) * (out_features + in_features), fp.value_bits,
                         fp.overhead_bits)

    def grow_in(self, linear: nn.Linear, beta: Beta) -> nn.Module:
        return GradualBranches(linear, self.build(linear), beta, self)

    # Export: the two factors and the bias of the finalized LowRankLinear, nothing else.
    def pack(self, module: nn.Module) -> Packed:
        tensors = {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}
        numel = sum(v.numel() for v in tensors.values())
        down = tensors["down.weight"]
        return Packed(tensors, {"shape": [tensors["up.weight"].shape[0], down.shape[1]], "rank": down.shape[0]},
                      32 * numel, numel - (module.out_features if "up.bias" in tensors else 0))

    def unpack(self, packed: Packed) -> nn.Module:
        (out_features, in_features), rank = packed.meta["shape"], packed.meta["rank"]
        with torch.device("meta"):  # no allocation: the factors are assigned below
            g = LowRankLinear(in_features, out_features, rank, bias="up.bias" in packed.tensors)
        g.load_state_dict(packed.tensors, assign=True)
        return g
