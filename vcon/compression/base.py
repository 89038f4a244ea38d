"""The one interface every compression implements, and the registry that finds them by name.

A compression turns an original block f (an ``nn.Linear``) into its compressed form g. There are two kinds:

* ``WeightCompression``: g is the same layer with transformed weights, ``C(W)`` (pruning, binarisation, their
  chain). VCON then blends the *weights*, ``W_eff = β·W + (1−β)·C(W)``: one matmul, and for a linear layer exactly
  ``β·f(x) + (1−β)·g(x)``.
* ``ModuleCompression``: g has another structure (low rank). VCON runs both branches and blends the outputs.

Each compression also says what it costs to store (``Footprint``), so the figures in ``results.json`` come from the
compression that produced them rather than from a table kept elsewhere.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn

from vcon.errors import ConfigError

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


class Compression:
    """Base of all compressions. Subclasses are small dataclasses built from the ``compression`` config group."""

    name: ClassVar[str]
    #: True for the dense baseline: nothing is wrapped and the VCON schedule is irrelevant.
    identity: ClassVar[bool] = False

    def check(self, layers: dict[str, nn.Linear]) -> None:
        """Raise ``ConfigError`` if the settings cannot apply to these layers; called before any training."""

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        """How this compression changes the storage of a matrix of ``weight_shape`` (see ``Footprint``)."""
        return fp


class WeightCompression(Compression):
    """g is f with the weight replaced by ``compress(W)``."""

    def compress(self, weight: torch.Tensor) -> torch.Tensor:
        """``C(W)``: the compressed weight, same shape and dtype. Called without autograd (gradients are STE)."""
        raise NotImplementedError


class ModuleCompression(Compression):
    """g is a new module built from f."""

    def build(self, linear: nn.Linear) -> nn.Module:
        raise NotImplementedError


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

