"""The one interface every compression implements, and the registry that finds them by name.

A compression turns an original block f (an ``nn.Linear``) into its compressed form g. There are two kinds:

* ``WeightCompression``: g is the same layer with transformed weights, ``C(W)`` (pruning, binarisation, their
  chain). VCON then blends the *weights*, ``W_eff = β·W + (1−β)·C(W)``: one matmul, and for a linear layer exactly
  ``β·f(x) + (1−β)·g(x)``.
* ``ModuleCompression``: g has another structure (low rank). VCON runs both branches and blends the outputs.

Each compression also says what it costs to store (``Footprint``), so the figures in ``results.json`` come from the
compression that produced them rather than from a table kept elsewhere, and how its β = 0 layer is really stored
(``pack``: the fewest tensors that rebuild it exactly) and run again (``unpack``: a small runtime module that keeps
no dense copy of the weight). ``vcon/export.py`` writes and loads those.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from vcon.errors import ConfigError, ExportError
from vcon.method.blend import Beta, BlendedBranches, BlendedLinear

REGISTRY: dict[str, type["Compression"]] = {}


def register(cls: type["Compression"]) -> type["Compression"]:
    """Class decorator: make a compression selectable as ``compression=<cls.name>``."""
    REGISTRY[cls.name] = cls
    return cls


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Storage of one weight matrix: ``values`` numbers of ``value_bits`` each, plus ``overhead_bits`` (masks, scales).

    Compressions compose by transforming a footprint: a dense fp32 matrix starts as ``(numel, 32, 0)``; pruning keeps
    fewer values and adds a bitmask; binarisation then makes the surviving values 1 bit and adds a scale.
    """

    values: int
    value_bits: int
    overhead_bits: int = 0

    @property
    def bits(self) -> int:
        return self.values * self.value_bits + self.overhead_bits


@dataclasses.dataclass
class Packed:
    """One layer in its real storage: ``tensors`` (what goes into model.safetensors), ``meta`` (JSON: shapes and
    codes the runtime needs), ``minimum_bits`` (the information-theoretic minimum of the same content, for the
    figures) and ``weights`` (how many weight values are stored: parameters, and multiply-adds per token)."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    minimum_bits: float
    weights: int

    def __or__(self, other: "Packed") -> "Packed":
        return Packed(self.tensors | other.tensors, self.meta | other.meta, self.minimum_bits + other.minimum_bits,
                      max(self.weights, other.weights))


class Compression:
    """Base of all compressions. Subclasses are small dataclasses built from the ``compression`` config group."""

    name: ClassVar[str]
    #: True for the dense baseline: nothing is wrapped and the VCON schedule is irrelevant.
    dense: ClassVar[bool] = False

    def describe(self) -> str:
        """The compression in a few words, for tables and plots: ``prune 0.9 layer``."""
        return self.name

    def check(self, layers: dict[str, nn.Linear]) -> None:
        """Raise ``ConfigError`` if the settings cannot apply to these layers; called before any training."""

    def blend(self, linear: nn.Linear, beta: Beta) -> nn.Module:
        """The module that stands for ``linear`` under VCON (``vcon.method.vcon``): blended with its compressed form
        at ``beta``."""
        raise NotImplementedError

    def grow_in(self, linear: nn.Linear, beta: Beta) -> nn.Module:
        """The module that stands for ``linear`` under ``method=gradual`` (``vcon.method.gradual``): this compression
        grown in at strength ``1 − β``. A compression without a gradual form refuses here, before the model
        changes."""
        raise ConfigError(f"method=gradual is not allowed with compression={self.name}: {type(self).__name__} has "
                          "no gradual form (Compression.grow_in); allowed: method=vcon")

    def scheduled(self, resolve: Any) -> "Compression":
        """This compression with its groups' own transitions resolved (``vcon.compression.recipe.Recipe``); one
        compression has none of its own: itself."""
        return self

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        """How this compression changes the storage of a matrix of ``weight_shape`` (see ``Footprint``)."""
        return fp

    def ramp_figures(self, strength: float, shapes: list[torch.Size]) -> dict[str, float]:
        """What the compression applies at ``strength`` (0: nothing, 1: all of it) to matrices of ``shapes``, for
        the logs of a gradual run: e.g. ``{"zeros": 0.45}``."""
        return {}

    def pack(self, module: nn.Module) -> Packed:
        """A finalized layer (``vcon.method.blend.finalize_``: the plain module a blended one is at β = 0) in its real
        storage, lossless w.r.t. what it computes."""
        raise ExportError(f"compression={self.name} cannot be exported yet: it has no packed form")

    def unpack(self, packed: Packed) -> nn.Module:
        """The runtime module rebuilt from ``pack``'s output, without a dense copy of the compressed weight."""
        raise ExportError(f"compression={self.name} cannot be loaded: it has no packed form")


class WeightCompression(Compression):
    """g is f with the weight replaced by ``compress(W)``.

    Export composes three hooks, so that a chain (prune, then binarise) stores the survivors' positions once (from
    its pruning stage) and their values at its last stage's width: ``stored`` (which entries, None: all),
    ``pack_positions`` (how their positions are coded) and ``pack_values`` (how the stored values are coded).
    """

    def blend(self, linear: nn.Linear, beta: Beta) -> nn.Module:
        """The layer that runs ``W_eff = β·W + (1−β)·C(W)``, on ``linear``'s own parameters."""
        return BlendedLinear(linear, self, beta)

    def grow_in(self, linear: nn.Linear, beta: Beta) -> nn.Module:
        """The layer that runs ``C_s(W)`` at strength ``s = 1 − β``, on ``linear``'s own parameters."""
        return BlendedLinear(linear, self, beta, gradual=True)

    def compress(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """``C(W)``: the compressed weight, same shape and dtype. ``weight`` may be a stack of matrices (``(..., out,
        in)``), each compressed on its own. Called without autograd (gradients are straight-through). ``strength``
        below 1 applies part of the compression (gradual compression: ``vcon/method/__init__.py``); 0 changes nothing."""
        raise NotImplementedError

    def compress_all(self, weights: list[torch.Tensor], strength: float = 1.0) -> list[torch.Tensor]:
        """``C(W)`` of many matrices: same-shaped ones are stacked and compressed in one call, so that a training step
        computes e.g. the top-k masks of ViT-T's 72 layers in 3 selections instead of 72 (on a GPU, each selection is
        tens of kernel launches)."""
        out: list[torch.Tensor | None] = [None] * len(weights)
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(weights):
            groups.setdefault((w.shape, w.dtype, w.device), []).append(i)
        for index in groups.values():
            compressed = self.compress(torch.stack([weights[i] for i in index]), strength)
            for i, c in zip(index, compressed.unbind(0)):
                out[i] = c
        return out

    def stored(self, weight: torch.Tensor) -> torch.Tensor | None:
        """Boolean mask of the entries of ``C(W)`` worth storing; None: all of them (a dense layout)."""
        return None

    def pack_positions(self, mask: torch.Tensor) -> Packed:
        raise ExportError(f"compression={self.name} stores no positions")

    def sparse_module(self, packed: Packed, values: torch.Tensor) -> nn.Module:
        """The runtime of a layer stored as positions + ``values`` (the pruning stage's)."""
        raise ExportError(f"compression={self.name} has no sparse runtime")

    def pack_values(self, values: torch.Tensor) -> Packed:
        """The stored values, a 1-D tensor: as they are (fp32) unless a stage codes them in fewer bits."""
        return Packed({"values": values.float().contiguous()}, {"values": "fp32"}, 32 * values.numel(), values.numel())

    def unpack_values(self, packed: Packed, count: int) -> torch.Tensor:
        return packed.tensors["values"]

    def dense_module(self, packed: Packed) -> nn.Module:
        """The runtime of a layer that stores every entry (no positions), e.g. binary weights."""
        raise ExportError(f"compression={self.name} has no dense-layout runtime")

    @torch.no_grad()
    def pack(self, module: nn.Module) -> Packed:
        """``module``: an ``nn.Linear`` whose weight is ``C(W)`` already. It is stored as it is, not compressed
        again: ``C(C(W))`` is not always ``C(W)`` to the last bit (a binary scale is the mean of the magnitudes,
        and the mean of n equal fp32 numbers can miss them by an ulp); the stored entries of ``C(W)`` are those of
        W (pruning's mask keeps the largest magnitudes, and the pruned ones are the zeros)."""
        compressed = module.weight.detach().float()
        mask = self.stored(compressed)
        if mask is None:
            packed = self.pack_values(compressed.reshape(-1))
        else:
            packed = self.pack_positions(mask) | self.pack_values(compressed[mask])  # row-major order
        packed.meta["shape"] = list(compressed.shape)
        if module.bias is not None:  # stored as it was
            packed.tensors["bias"] = module.bias.detach().float().contiguous()
            packed.minimum_bits += 32 * module.bias.numel()
        return packed

    def unpack(self, packed: Packed) -> nn.Module:
        if "positions" in packed.meta:
            return self.sparse_module(packed, self.unpack_values(packed, packed.meta["kept"]))
        return self.dense_module(packed)


class ModuleCompression(Compression):
    """g is a new module built from f."""

    def build(self, linear: nn.Linear) -> nn.Module:
        raise NotImplementedError

    def blend(self, linear: nn.Linear, beta: Beta) -> nn.Module:
        """VCON runs both branches, ``linear`` and ``build(linear)``."""
        return BlendedBranches(linear, self.build(linear), beta)


def to_config(compression: Compression) -> dict[str, Any]:
    """The plain (JSON) config that ``from_config`` turns back into ``compression``."""
    def plain(value: Any) -> Any:
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if hasattr(value, "items"):  # dict or OmegaConf DictConfig
            return {str(k): plain(v) for k, v in value.items()}
        return [plain(v) for v in value]

    return {"name": compression.name} | {f.name: plain(getattr(compression, f.name))
                                         for f in dataclasses.fields(compression)}


def from_config(cfg: Any) -> Compression:
    """Build the compression a ``compression`` config (a mapping with ``name`` and its settings) describes."""
    settings = dict(cfg)
    name = settings.pop("name", None)
    if name not in REGISTRY:
        raise ConfigError(f"compression.name={name!r} is not a known compression; allowed: {sorted(REGISTRY)}")
    cls = REGISTRY[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - known
    if unknown:
        raise ConfigError(f"compression={name} has no setting(s) {sorted(unknown)}; allowed: {sorted(known)}")
    return cls(**settings)

