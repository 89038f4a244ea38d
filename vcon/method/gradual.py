"""Gradual compression, the iterative baselines the paper compares against (``method=gradual``): nothing is blended;
the compression itself grows in, at strength ``s = 1 − β`` along the schedule. Pruning zeroes a growing fraction of
the weights (Zhu & Gupta 2017), quantization binarises a growing fraction, largest magnitudes first (INQ, Zhou et
al. 2017), low rank runs each layer at a falling rank (``GradualBranches``). Its default shape is ``cubic``, which
makes ``s`` Zhu & Gupta's ramp ``s_f·(1 − (1 − t/Q)^3)``."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from vcon.errors import ConfigError
from vcon.method.base import Method
from vcon.method.blend import Beta, BlendedBranches, strength
from vcon.schema import check_fields, integer, setting


class RankRamp(Protocol):
    """What gradual rank reduction asks of its compression (``vcon.compression.lrd.LowRank``)."""

    def rank_for(self, out_features: int, in_features: int, strength: float = 1.0) -> int: ...

    def build(self, linear: nn.Linear) -> nn.Module: ...


@dataclasses.dataclass(frozen=True)
class Gradual(Method):
    """``svd_every``: optimizer steps between the SVDs of each low-rank layer's current weight during the ramp (an
    SVD per layer per step would cost more than the step); pruning and quantization follow every step."""

    name: ClassVar[str] = "gradual"
    capturable: ClassVar[bool] = False  # the strength changes the step's shapes (a rank, a top-k) at every step
    svd_every: int = setting(integer(1, means="optimizer steps between SVDs"), 10)

    def __post_init__(self) -> None:
        check_fields(self, "method")

    def describe(self) -> str:
        return "gradual"

    def check(self, compression: Any) -> None:
        if compression.dense:
            raise ConfigError("method=gradual is not allowed with compression=none: nothing is compressed, so "
                              "nothing can grow in; choose a compression (prune, quant, lrd, prune-quant, a recipe) "
                              "or method=vcon")

    def wrap(self, compression: Any, module: nn.Module, beta: Beta) -> nn.Module:
        return compression.grow_in(module, beta)

    def strength(self, beta: Beta) -> float:
        return strength(beta, gradual=True)

    def after_step(self, layers: list[nn.Module], step: int, beta: Beta) -> None:
        if beta.value > 0 and step % self.svd_every == 0:
            for layer in layers:  # gradual low rank: a new SVD of each layer's current weight
                if isinstance(layer, GradualBranches) and layer.original is not None:
                    layer.refresh()

    def scalars(self, beta: Beta, compression: Any, shapes: list[torch.Size]) -> dict[str, float]:
        figures = compression.ramp_figures(1 - beta.value, shapes)
        return {"gradual/strength": 1 - beta.value} | {f"gradual/{k}": v for k, v in figures.items()}


class GradualBranches(BlendedBranches):
    """Gradual rank reduction, low rank's gradual form: during the ramp the layer runs its current weight projected
    onto the top-r singular vectors of an SVD of that weight, r falling from full rank to the target as the strength
    ``1 − β`` grows. The gradient goes through the projection, so only the directions the layer runs are trained: a
    straight-through gradient would also move the dropped directions, which the loss never saw, and the next SVD
    would pick them up (measured on vit-micro, rank 4, Q = 3 epochs: 72 % validation accuracy at the ramp's end
    straight-through, 80 % through the projection). The SVD is refreshed every ``method.svd_every`` steps by
    the controller (``refresh``) and kept in the ``basis`` buffer, so a resumed run projects exactly as before. At
    β = 0 the factors ``g`` become the truncated SVD of the weight trained so far and the dense layer is dropped,
    as VCON's low rank drops it; ``g`` is in the optimizer from the start, but has no gradient before that."""

    def __init__(self, original: nn.Linear, compressed: nn.Module, beta: Beta, compression: RankRamp) -> None:
        super().__init__(original, compressed, beta)
        self.compression = compression
        side = min(original.weight.shape)
        self.register_buffer("basis", original.weight.new_empty(side, side, dtype=torch.float32))
        self.precomputed: torch.Tensor | None = None  # the projected weight (with its graph), set by blend_'s hooks
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """A new SVD of the current weight: the singular vectors of its smaller side, largest first, as rows."""
        weight = self.original.weight.float()
        u, _, vh = torch.linalg.svd(weight, full_matrices=False)
        self.basis.copy_(vh if weight.shape[1] <= weight.shape[0] else u.T)

    def projected(self, strength: float) -> torch.Tensor:
        """The current weight at the rank of ``strength``, through the last SVD's singular vectors."""
        weight = self.original.weight
        basis = self.basis[:self.compression.rank_for(*weight.shape, strength)].to(weight.dtype)
        return (weight @ basis.T) @ basis if weight.shape[1] <= weight.shape[0] else basis.T @ (basis @ weight)

    def prepare(self, strength: float) -> None:
        """Before each forward of the model (``vcon.method.blend.Precompute``): the weight this step runs, in the
        autograd graph, so that the gradient reaches the weight through the projection."""
        self.precomputed = self.projected(strength) if self.original is not None else None

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer runs during the ramp."""
        if self.beta.phase == "original":
            return self.original.weight
        weight = self.precomputed
        return self.projected(strength(self.beta, gradual=True)) if weight is None else weight  # None: called alone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.original is None:
            return self.compressed(x)
        return F.linear(x, self.effective_weight(), self.original.bias)

    @torch.no_grad()
    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.original is None:
            return None
        return self.original(x), F.linear(x, self.projected(1.0), self.original.bias)

    def drop_original(self) -> list[nn.Parameter]:
        if self.original is not None:
            with torch.no_grad():  # the factors start from the weight the ramp has trained
                self.compressed.load_state_dict(self.compression.build(self.original).state_dict())
            self.basis = None
        return super().drop_original()
