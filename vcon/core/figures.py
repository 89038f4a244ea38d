"""Storage figures of compressed layers at β = 0, from each compression's own ``Footprint``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vcon.compression import Compression, Footprint
from vcon.method.blend import BlendedBranches, BlendedLinear, original_shape


@torch.no_grad()
def figures(net: nn.Module, parts: list[tuple[str, Compression, list[str]]], name: str) -> dict[str, Any]:
    """Figures over the compressed layers at β = 0, ``parts`` being (group, compression, module names): parameters
    before/after, storage bits per original weight (from each compression's ``Footprint``), and the measured fraction
    of zeros in the weights that would be stored. Several groups (a recipe): the totals over all of them, and each
    group's under ``groups``; a dense group's layers count as they are (32 bits a weight)."""
    sums = {group: _sums(net, compression, names) for group, compression, names in parts}
    total = _figures(name, [sum(s[i] for s in sums.values()) for i in range(6)])
    if len(parts) > 1:
        total["groups"] = {group: _figures(compression.name, sums[group]) for group, compression, _ in parts}
    return total


def _sums(net: nn.Module, compression: Compression, names: list[str]) -> list[int]:
    """[layers, parameters before, after, bits, zeros, stored] of one compression's layers."""
    before = after = bits = zeros = stored = 0
    for name in names:
        module = net.get_submodule(name)
        shape = original_shape(module)
        if isinstance(module, BlendedLinear):
            weights = [compression.compress(module.weight)]
        else:  # low rank's factors; a finalized layer (C(W) in it); a dense layer, as it is
            layer = module.compressed if isinstance(module, BlendedBranches) else module
            weights = [p for n, p in layer.named_parameters() if n.endswith("weight")]
        fp = compression.footprint(Footprint(shape.numel(), 32), shape)
        before += shape.numel()
        after += fp.values
        bits += fp.bits
        zeros += sum(int((w == 0).sum()) for w in weights)
        stored += sum(w.numel() for w in weights)
    return [len(names), before, after, bits, zeros, stored]


def _figures(name: str, sums: list[int]) -> dict[str, Any]:
    layers, before, after, bits, zeros, stored = sums
    return {
        "name": name,
        "layers": layers,
        "params_before": before,
        "params_after": after,
        "bits_per_weight": bits / max(before, 1),
        "bytes_before": 4 * before,
        "bytes_after": (bits + 7) // 8,
        "zero_fraction": zeros / max(stored, 1),
        "size_ratio": bits / max(32 * before, 1),
    }
