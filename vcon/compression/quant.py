"""Weight quantization: binary ``sign(W)·mean|W|`` (the paper's), or symmetric uniform k-bit, one scale per tensor."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from vcon.compression import bits
from vcon.compression.base import Footprint, Packed, WeightCompression, register
from vcon.errors import ExportError
from vcon.schema import check_fields, integer, setting


@register
@dataclasses.dataclass
class Quant(WeightCompression):
    """``bits=1``: ``sign(W)·s`` with ``s`` the mean |W| of the non-zero weights. Zeros stay zero, so after pruning
    (``compression=prune-quant``) only the survivors are binarised and the scale is theirs.
    ``bits`` in 2..8: round ``W/s`` to the integers in ``[-(2^(k-1)-1), 2^(k-1)-1]``, ``s = max|W| / (2^(k-1)-1)``.
    """

    name = "quant"
    bits: int = setting(integer(1, 8, means="1: binary"), 1)

    def __post_init__(self) -> None:
        check_fields(self, "compression")

    def describe(self) -> str:
        return "binary" if self.bits == 1 else f"{self.bits}-bit"

    def compress(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """At ``strength`` s < 1 (gradual, INQ's order) only the fraction s of the non-zero weights with the largest
        magnitudes is quantized, the rest is left as it is; a binary scale is then the mean |W| of the quantized
        ones, so the scale moves smoothly from the largest weights' to the whole layer's."""
        magnitude = weight.abs()
        matrix = (-2, -1)  # one scale per matrix, also in a stack of them
        chosen = weight != 0 if strength >= 1 else _largest(magnitude, strength)
        if self.bits == 1:
            scale = (magnitude * chosen).sum(matrix, keepdim=True) / chosen.sum(matrix, keepdim=True).clamp(min=1)
            quantized = torch.sign(weight) * scale
        else:  # the largest weights are quantized first: the layer's max |W| is always among them
            levels = 2 ** (self.bits - 1) - 1
            scale = magnitude.amax(matrix, keepdim=True).clamp(min=torch.finfo(weight.dtype).tiny) / levels
            quantized = torch.round(weight / scale).clamp(-levels, levels) * scale
        return quantized if strength >= 1 else torch.where(chosen, quantized, weight)

    def ramp_figures(self, strength: float, shapes: list[torch.Size]) -> dict[str, float]:
        return {"binarised" if self.bits == 1 else "quantised": min(strength, 1.0)}

    def footprint(self, fp: Footprint, weight_shape: torch.Size) -> Footprint:
        return Footprint(fp.values, self.bits, fp.overhead_bits + 32)  # one fp32 scale per tensor

    # Export: integer codes at ``bits`` each (binary: the sign bit) plus the one fp32 scale, recovered from C(W)
    # itself (the largest stored magnitude is the scale times the top level), so the chain's survivors pack alike.
    def _levels(self) -> int:
        return max(1, 2 ** (self.bits - 1) - 1)

    def pack_values(self, values: torch.Tensor) -> Packed:
        scale = values.abs().max().clamp(min=torch.finfo(values.dtype).tiny) / self._levels()
        codes = torch.round(values / scale)
        if self.bits == 1:
            if bool((values == 0).any()):
                raise ExportError("a binary layer holds weights that are exactly 0: they have no 1-bit code")
            codes = (codes > 0).long()  # sign bit: 1 is +scale, 0 is -scale
        else:
            codes = codes.long() + self._levels()  # 0 .. 2^bits - 2
        return Packed({"codes": bits.pack_ints(codes, self.bits), "scale": scale.reshape(1).float()},
                      {"values": f"int{self.bits}", "count": values.numel()}, self.bits * values.numel() + 32,
                      values.numel())

    def unpack_values(self, packed: Packed, count: int) -> torch.Tensor:
        return _decode(packed.tensors["codes"], count, self.bits, packed.tensors["scale"])

    def dense_module(self, packed: Packed) -> nn.Module:
        return QuantLinear(*packed.meta["shape"], self.bits, packed.tensors["codes"], packed.tensors["scale"],
                           packed.tensors.get("bias"))


def _largest(magnitude: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per matrix of a stack: True at the ``fraction`` of its non-zero entries with the largest magnitudes."""
    flat = magnitude.flatten(-2)
    nonzero = flat != 0
    count = (fraction * nonzero.sum(-1, keepdim=True)).round().long()
    threshold = flat.sort(-1, descending=True).values.gather(-1, (count - 1).clamp(min=0))
    return (nonzero & (flat >= threshold) & (count > 0)).view_as(magnitude)


def _decode(codes: torch.Tensor, count: int, width: int, scale: torch.Tensor) -> torch.Tensor:
    if width == 1:  # one table lookup per byte (8 signs at once): the hot path of binary layers, done per forward
        byte_signs = 2.0 * ((torch.arange(256, device=codes.device).unsqueeze(1) >> torch.arange(
            8, device=codes.device)) & 1) - 1
        return (byte_signs[codes.long()].reshape(-1)[:count] * scale).float()
    levels = bits.unpack_ints(codes, count, width) - (2 ** (width - 1) - 1)
    return levels.float() * scale


class QuantLinear(nn.Module):
    """A quantized layer at run time: the codes stay packed (1 bit per binary weight); each forward decodes them
    into a temporary fp32 matrix and runs one dense matmul. No dense copy is kept between calls."""

    execution = "packed codes decoded per forward into a temporary fp32 matrix, dense matmul"

    def __init__(self, out_features: int, in_features: int, width: int, codes: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features, self.width = out_features, in_features, width
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _decode(self.codes, self.out_features * self.in_features, self.width, self.scale)
        return F.linear(x, weight.view(self.out_features, self.in_features).to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))
