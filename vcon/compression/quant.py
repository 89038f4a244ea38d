"""Weight quantization: binary ``sign(W)·mean|W|`` (the paper's), or symmetric uniform k-bit, one scale per tensor."""
from __future__ import annotations

import dataclasses

import torch

from vcon.compression.base import Footprint, WeightCompression, register
from vcon.errors import require


@register
@dataclasses.dataclass
class Quant(WeightCompression):
    """``bits=1``: ``sign(W)·s`` with ``s`` the mean |W| of the non-zero weights. Zeros stay zero, so after pruning
    (``compression=prune-quant``) only the survivors are binarised and the scale is theirs.
    ``bits`` in 2..8: round ``W/s`` to the integers in ``[-(2^(k-1)-1), 2^(k-1)-1]``, ``s = max|W| / (2^(k-1)-1)``.
    """

    name = "quant"
    bits: int = 1

    def __post_init__(self) -> None:
        require(isinstance(self.bits, int) and 1 <= self.bits <= 8, "compression.bits", self.bits,
                "an integer from 1 (binary) to 8")

    def compress(self, weight: torch.Tensor) -> torch.Tensor:
        magnitude = weight.abs()
        if self.bits == 1:
            scale = magnitude.sum() / (weight != 0).sum().clamp(min=1)
            return torch.sign(weight) * scale
        levels = 2 ** (self.bits - 1) - 1
        scale = magnitude.max().clamp(min=torch.finfo(weight.dtype).tiny) / levels
        return torch.round(weight / scale).clamp(-levels, levels) * scale

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        return Footprint(fp.values, self.bits, fp.overhead_bits + 32)  # one fp32 scale per tensor
