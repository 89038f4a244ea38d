"""Several weight compressions applied in turn, e.g. prune then binarise the survivors."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from vcon.compression.base import Footprint, WeightCompression, from_config, register
from vcon.errors import ConfigError


@register
@dataclasses.dataclass
class Chain(WeightCompression):
    """``steps``: a list of compression configs, applied first to last: ``C(W) = C_n(…C_1(W))``."""

    name = "chain"
    steps: list[Any] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.stages = [from_config(step) for step in self.steps]
        if not self.stages or not all(isinstance(s, WeightCompression) for s in self.stages):
            raise ConfigError(f"compression.steps={[getattr(s, 'name', s) for s in self.stages]} is not allowed: "
                              "expected one or more weight compressions (prune, quant)")

    def check(self, layers: dict[str, nn.Linear]) -> None:
        for stage in self.stages:
            stage.check(layers)

    def compress(self, weight: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            weight = stage.compress(weight)
        return weight

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        for stage in self.stages:
            fp = stage.footprint(fp, weight_shape)
        return fp
