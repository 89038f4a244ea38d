"""Storage figures of compressed layers at β = 0, from each compression's own ``Footprint``."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vcon.compression import Compression, Footprint
from vcon.method.blend import BlendedBranches, BlendedLinear, original_shape


@torch.no_grad()
def figures(net: nn.Module, compression: Compression, names: list[str]) -> dict[str, Any]:
    """Figures over the compressed layers at β = 0: parameters before/after, storage bits per original weight (from
    each compression's ``Footprint``), and the measured fraction of zeros in the weights that would be stored."""
    before = after = bits = zeros = stored = 0
    for name in names:
        module = net.get_submodule(name)
        shape = original_shape(module)
        if isinstance(module, BlendedLinear):
            weights = [compression.compress(module.weight)]
        else:  # low rank's factors; a finalized layer (C(W) in it); the dense baseline's layers, as they are
            layer = module.compressed if isinstance(module, BlendedBranches) else module
            weights = [p for n, p in layer.named_parameters() if n.endswith("weight")]
        fp = compression.footprint(Footprint(shape.numel(), 32), shape)
        before += shape.numel()
        after += fp.values
        bits += fp.bits
        zeros += sum(int((w == 0).sum()) for w in weights)
        stored += sum(w.numel() for w in weights)
    return {
        "name": compression.name,
        "layers": len(names),
        "params_before": before,
        "params_after": after,
        "bits_per_weight": bits / max(before, 1),
        "bytes_before": 4 * before,
        "bytes_after": (bits + 7) // 8,
        "zero_fraction": zeros / max(stored, 1),
        "size_ratio": bits / max(32 * before, 1),
    }
