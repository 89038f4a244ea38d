"""The kinds of layer vcon compresses, one entry each: what the rest of vcon needs of a layer of that kind. Today
``nn.Linear`` (subclasses included); a convolution would be one more entry here (its weight seen as the matrix
out × (in·kh·kw)), not another ``isinstance`` elsewhere."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class LayerKind:
    """``type``: the torch module class (``target.types`` names it); ``shape``: the (out, in) of its weight as a
    matrix, what compressions and figures see; ``plain``: the layer of this kind holding the given weight and bias
    parameters themselves (what a finalized layer becomes)."""

    type: type[nn.Module]
    shape: Callable[[nn.Module], torch.Size]
    plain: Callable[[nn.Parameter, nn.Parameter | None], nn.Module]


def _plain_linear(weight: nn.Parameter, bias: nn.Parameter | None) -> nn.Linear:
    with torch.device("meta"):  # its own initial weights would be replaced at once
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    linear.weight, linear.bias = weight, bias
    return linear


LAYERS: dict[str, LayerKind] = {
    "Linear": LayerKind(nn.Linear, lambda m: torch.Size([m.out_features, m.in_features]), _plain_linear),
}


def kind_of(module: nn.Module) -> LayerKind | None:
    """The entry of ``module``'s kind (its class or a base class of it), None for a layer vcon does not compress."""
    return next((kind for kind in LAYERS.values() if isinstance(module, kind.type)), None)

