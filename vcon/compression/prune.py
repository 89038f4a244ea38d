"""Magnitude pruning: keep the largest |W|, zero the rest, per layer, per output row, or in N:M groups."""
from __future__ import annotations

import dataclasses
import math
import re

import torch
from torch import nn

from vcon.compression.base import Footprint, WeightCompression, register
from vcon.errors import ConfigError, require

_NM = re.compile(r"^(\d+):(\d+)$")


@register
@dataclasses.dataclass
class Prune(WeightCompression):
    """``ratio`` of the weights become zero. The mask is recomputed from the current latent weights at every call,
    as the reference does, so a pruned weight whose magnitude grows back is kept again (dynamic masks).

    ``granularity``: ``layer`` (the smallest |W| of the whole matrix), ``row`` (the same ratio in every output row),
    or ``N:M`` (keep N of every M consecutive inputs, e.g. ``2:4`` for sparse tensor cores; the ratio is then 1-N/M).
    """

    name = "prune"
    ratio: float = 0.9
    granularity: str = "layer"

    def __post_init__(self) -> None:
        require(isinstance(self.ratio, (int, float)) and 0 <= self.ratio < 1, "compression.ratio", self.ratio,
                "a fraction in [0, 1)")
        self.group = self._parse_group(str(self.granularity))
        if self.group is not None:
            n, m = self.group
            implied = 1 - n / m
            if not math.isclose(self.ratio, implied):
                raise ConfigError(f"compression.granularity={self.granularity} prunes exactly {implied:g} of the "
                                  f"weights but compression.ratio={self.ratio}; set compression.ratio={implied:g}")

    @staticmethod
    def _parse_group(granularity: str) -> tuple[int, int] | None:
        if granularity in ("layer", "row"):
            return None
        match = _NM.match(granularity)
        if match and 0 < int(match[1]) < int(match[2]):
            return int(match[1]), int(match[2])
        raise ConfigError(f"compression.granularity={granularity!r} is not allowed: expected 'layer', 'row' or "
                          "'N:M' with 0 < N < M (e.g. '2:4')")

    def check(self, layers: dict[str, nn.Linear]) -> None:
        if self.group is None:
            return
        m = self.group[1]
        for name, layer in layers.items():
            if layer.in_features % m:
                raise ConfigError(f"compression.granularity={self.granularity} is not allowed for layer {name}: its "
                                  f"{layer.in_features} inputs do not split into groups of {m}")

    def keep_mask(self, weight: torch.Tensor) -> torch.Tensor:
        """Boolean mask of the kept weights; exact counts even with ties (top-k, not a threshold)."""
        scores = weight.detach().abs()
        if self.group is not None:
            n, m = self.group
            groups = scores.reshape(-1, m)
            return _top_k_mask(groups, n).reshape(weight.shape)
        if self.granularity == "row":
            return _top_k_mask(scores, scores.shape[1] - round(self.ratio * scores.shape[1]))
        flat = scores.reshape(1, -1)
        return _top_k_mask(flat, flat.shape[1] - round(self.ratio * flat.shape[1])).reshape(weight.shape)

    def compress(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.keep_mask(weight)

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        rows, cols = weight_shape
        if self.group is not None:
            n, m = self.group
            kept = fp.values * n // m
            index_bits = kept * math.ceil(math.log2(m))  # position inside each group of M
        else:
            per_row = cols - round(self.ratio * cols)
            kept = rows * per_row if self.granularity == "row" else fp.values - round(self.ratio * fp.values)
            index_bits = min(fp.values, kept * math.ceil(math.log2(fp.values)))  # bitmask or indices
        return Footprint(kept, fp.value_bits, fp.overhead_bits + index_bits)


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``scores``, True at the ``k`` largest entries."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, scores.topk(k, dim=1, sorted=False).indices, True)
    return mask
