"""Magnitude pruning: keep the largest |W|, zero the rest, per layer, per output row, or in N:M groups."""
from __future__ import annotations

import dataclasses
import math
import re
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from vcon.compression import bits
from vcon.compression.base import Footprint, Packed, WeightCompression, register
from vcon.errors import ConfigError
from vcon.schema import Allowed, check_fields, number, setting

_NM = re.compile(r"^(\d+):(\d+)$")


def _n_of_m(granularity: object) -> tuple[int, int] | None:
    """``'N:M'`` (keep N of every M, 0 < N < M) as ``(N, M)``; None for anything else."""
    match = _NM.match(granularity) if isinstance(granularity, str) else None
    return (int(match[1]), int(match[2])) if match and 0 < int(match[1]) < int(match[2]) else None


@register
@dataclasses.dataclass
class Prune(WeightCompression):
    """``ratio`` of the weights become zero. The mask is recomputed from the current latent weights at every call,
    as the reference does, so a pruned weight whose magnitude grows back is kept again (dynamic masks).

    ``granularity``: ``layer`` (the smallest |W| of the whole matrix), ``row`` (the same ratio in every output row),
    or ``N:M`` (keep N of every M consecutive inputs, e.g. ``2:4`` for sparse tensor cores; the ratio is then 1-N/M).
    """

    name = "prune"
    ratio: float = setting(number(0, below=1, what="a fraction"), 0.9)
    granularity: str = setting(Allowed("'layer', 'row' or 'N:M' with 0 < N < M (e.g. '2:4')",
                                       lambda g: g in ("layer", "row") or _n_of_m(g) is not None), "layer")

    def __post_init__(self) -> None:
        check_fields(self, "compression")
        self.group = _n_of_m(self.granularity)
        if self.group is not None:
            n, m = self.group
            implied = 1 - n / m
            if not math.isclose(self.ratio, implied):
                raise ConfigError(f"compression.granularity={self.granularity} prunes exactly {implied:g} of the "
                                  f"weights but compression.ratio={self.ratio}; set compression.ratio={implied:g}")

    def describe(self) -> str:
        return f"prune {self.ratio:g} {self.granularity}"

    def check(self, layers: dict[str, nn.Linear]) -> None:
        if self.group is None:
            return
        m = self.group[1]
        for name, layer in layers.items():
            if layer.in_features % m:
                raise ConfigError(f"compression.granularity={self.granularity} is not allowed for layer {name}: its "
                                  f"{layer.in_features} inputs do not split into groups of {m}")

    def keep_mask(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        """Boolean mask of the kept weights of a matrix or a stack of matrices (``(..., out, in)``); exact counts even
        with ties (top-k, not a threshold). At ``strength`` s < 1 (gradual pruning) the fraction of zeros is
        ``s·ratio``, and N:M keeps ``M − round(s·(M − N))`` of every M."""
        scores = weight.detach().abs()
        rows, cols = scores.shape[-2:]
        if self.group is not None:
            n, m = self.group
            return _top_k_mask(scores.reshape(-1, m), m - round(strength * (m - n))).reshape(weight.shape)
        ratio = strength * self.ratio
        if self.granularity == "row":
            return _top_k_mask(scores.reshape(-1, cols), cols - round(ratio * cols)).reshape(weight.shape)
        size = rows * cols
        return _top_k_mask(scores.reshape(-1, size), size - round(ratio * size)).reshape(weight.shape)

    def compress(self, weight: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
        return weight * self.keep_mask(weight, strength)

    def ramp_figures(self, strength: float, shapes: list[torch.Size]) -> dict[str, float]:
        if self.group is not None:
            n, m = self.group
            return {"zeros": 1 - (m - round(strength * (m - n))) / m}
        return {"zeros": strength * self.ratio}

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


    # Export: the kept values and their positions (bits.pack_positions), or, for N:M, each kept value's index inside
    # its group at ceil(log2 M) bits: the values + metadata layout that semi-structured sparse kernels take.
    def stored(self, weight: torch.Tensor) -> torch.Tensor:
        return self.keep_mask(weight)

    def pack_positions(self, mask: torch.Tensor) -> Packed:
        rows, cols = mask.shape
        kept = int(mask.sum())
        if self.group is not None:
            n, m = self.group
            index = mask.reshape(-1, m).nonzero()[:, 1]  # row-major: group by group, ascending inside each
            groups = mask.numel() // m
            return Packed({"group_index": bits.pack_ints(index, math.ceil(math.log2(m)))},
                          {"positions": f"{n}:{m}", "kept": kept}, groups * bits.log2_binomial(m, n), kept)
        tensors, meta = bits.pack_positions(mask)
        if self.granularity == "row":  # each row keeps the same count: the minimum knows it
            minimum = rows * bits.log2_binomial(cols, kept // rows)
        else:
            minimum = bits.log2_binomial(mask.numel(), kept)
        return Packed(tensors, meta, minimum, kept)

    def sparse_module(self, packed: Packed, values: torch.Tensor) -> nn.Module:
        rows, cols = packed.meta["shape"]
        kept = packed.meta["kept"]
        if self.group is not None:
            n, m = self.group
            index = bits.unpack_ints(packed.tensors["group_index"], kept, math.ceil(math.log2(m)))
            flat = torch.arange(kept // n).repeat_interleave(n) * m + index
        else:
            flat = bits.unpack_positions(packed.tensors, packed.meta, rows * cols)
        return SparseLinear(rows, cols, flat, values, packed.tensors.get("bias"))


class SparseLinear(nn.Module):
    """A pruned layer at run time: CSR (row pointers, int32 column indices, the kept fp32 values: 8 bytes per kept
    weight in memory, so below 50 % density it is smaller than dense). No dense copy of the weight is kept.

    How it multiplies is chosen per call, by what was faster on a 2-core AMD EPYC (AVX-512) with MKL
    (bench/export_speed.py): the sparse CSR matmul wins only for few input rows (a batch of one image) and a low
    density; otherwise the CSR is decoded into a temporary dense matrix for one dense matmul, close to dense speed.
    """

    execution = ("CSR sparse matmul (torch.mm, sparse_csr weight) up to 1024 token rows at <= 25 % density; "
                 "otherwise CSR decoded per forward into a temporary dense matrix, dense matmul")
    CSR_MAX_ROWS, CSR_MAX_DENSITY = 1024, 0.25

    def __init__(self, out_features: int, in_features: int, flat_index: torch.Tensor, values: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        rows = flat_index // in_features
        counts = torch.bincount(rows, minlength=out_features)
        self.register_buffer("crow", torch.cat([counts.new_zeros(1), counts.cumsum(0)]).int())
        self.register_buffer("col", (flat_index % in_features).int())
        self.register_buffer("values", values)
        self.register_buffer("bias", bias)
        self.sparse_matmul = len(values) <= self.CSR_MAX_DENSITY * out_features * in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            weight = torch.sparse_csr_tensor(self.crow, self.col, self.values.to(x.dtype),
                                             (self.out_features, self.in_features))
        bias = None if self.bias is None else self.bias.to(x.dtype)
        flat = x.reshape(-1, self.in_features)
        if self.sparse_matmul and len(flat) <= self.CSR_MAX_ROWS:
            y = torch.mm(weight, flat.t().contiguous()).t()
            y = y if bias is None else y + bias
        else:
            y = F.linear(flat, weight.to_dense(), bias)
        return y.reshape(*x.shape[:-1], self.out_features)


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Per row of ``scores``, True at the ``k`` largest entries."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, scores.topk(k, dim=1, sorted=False).indices, True)
    return mask
