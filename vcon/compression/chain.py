"""Several weight compressions applied in turn, e.g. prune then binarise the survivors."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vcon.compression.base import REGISTRY, Footprint, Packed, WeightCompression, from_config, register
from vcon.errors import ConfigError
from vcon.schema import options


@register
@dataclasses.dataclass
class Chain(WeightCompression):
    """``steps``: a list of compression configs, applied first to last: ``C(W) = C_n(…C_1(W))``."""

    name = "chain"
    steps: list[Any] = options(lambda: REGISTRY, each=True)

    def __post_init__(self) -> None:
        self.stages = [from_config(step) for step in self.steps]
        if not self.stages or not all(isinstance(s, WeightCompression) for s in self.stages):
            raise ConfigError(f"compression.steps={[getattr(s, 'name', s) for s in self.stages]} is not allowed: "
                              "expected one or more weight compressions (prune, quant)")

    def describe(self) -> str:
        return " + ".join(stage.describe() for stage in self.stages)

    def check(self, layers: dict[str, nn.Linear]) -> None:
        for stage in self.stages:
            stage.check(layers)

    def compress(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        for stage in self.stages:  # gradual: every stage ramps together
            weight = stage.compress(weight, strength)
        return weight

    def ramp_figures(self, strength: float, shapes: list[torch.Size]) -> dict[str, float]:
        return {k: v for stage in self.stages for k, v in stage.ramp_figures(strength, shapes).items()}

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        for stage in self.stages:
            fp = stage.footprint(fp, weight_shape)
        return fp

    # Export: the positions the pruning stage leaves (the first stage that stores a subset), the values coded by the
    # last stage (e.g. the survivors' sign bits and scale).
    def stored(self, weight: torch.Tensor) -> torch.Tensor | None:
        for stage in self.stages:
            mask = stage.stored(weight)
            if mask is not None:
                return mask
            weight = stage.compress(weight)
        return None

    def _positions_stage(self) -> WeightCompression:
        return next(s for s in self.stages if type(s).stored is not WeightCompression.stored)

    def pack_positions(self, mask: torch.Tensor) -> Packed:
        return self._positions_stage().pack_positions(mask)

    def sparse_module(self, packed: Packed, values: torch.Tensor) -> nn.Module:
        return self._positions_stage().sparse_module(packed, values)

    def pack_values(self, values: torch.Tensor) -> Packed:
        return self.stages[-1].pack_values(values)

    def unpack_values(self, packed: Packed, count: int) -> torch.Tensor:
        return self.stages[-1].unpack_values(packed, count)

    def dense_module(self, packed: Packed) -> nn.Module:
        return self.stages[-1].dense_module(packed)
