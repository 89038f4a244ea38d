"""Which modules to compress, chosen by type and name patterns, never by a library's internal attribute names.

A choice is a ``filter_fn(module, name) -> bool`` over ``model.named_modules()``, as in torchao's ``quantize_``. The
default, ``in_blocks(model)``, takes every ``nn.Linear`` inside the model's transformer blocks, found structurally:
the outermost ``nn.ModuleList`` or ``nn.Sequential`` whose entries are two or more containers of one class. For a
ViT or a BERT that is the encoder's layer list, whatever transformers calls it, so the embeddings (before the
blocks) and the classifier head (after them) are never chosen. The ``target`` config builds such a filter too
(``from_config``).
"""
from __future__ import annotations

import fnmatch
from typing import Any, Callable, Sequence

from torch import nn

from vcon.errors import ConfigError, require
from vcon.layers import LAYERS, kind_of

WITHIN = ("blocks", "all")
FilterFn = Callable[[nn.Module, str], bool]


def _inside(name: str) -> str:
    """The prefix of the names of the modules inside the module ``name`` ("" for the model itself)."""
    return f"{name}." if name else ""


def block_lists(model: nn.Module) -> list[str]:
    """Names of the outermost lists of repeated blocks: an ``nn.ModuleList`` (transformers) or ``nn.Sequential``
    (timm) of two or more modules of one class that are themselves containers (so an MLP's ``Sequential(Linear,
    Linear)`` is not taken for blocks); "" when the model itself is such a list."""
    found: list[str] = []
    for name, module in model.named_modules():
        if found and name.startswith(tuple(map(_inside, found))):
            continue
        if (isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) >= 2
                and len({type(m) for m in module}) == 1 and next(iter(module[0].children()), None) is not None):
            found.append(name)
    return found


def in_blocks(model: nn.Module, types: Sequence[type] = (nn.Linear,)) -> FilterFn:
    """The default choice: modules of ``types`` inside the model's repeated blocks."""
    prefixes = tuple(map(_inside, block_lists(model)))
    if not prefixes:
        raise ConfigError("target.within=blocks found no repeated blocks (an nn.ModuleList of same-class modules) "
                          "in this model; use target.within=all with target.include patterns, or a filter_fn")
    return lambda module, name: isinstance(module, tuple(types)) and name.startswith(prefixes)


def _module_type(name: str) -> type:
    require(name in LAYERS, "target.types", name,
            f"one of {sorted(LAYERS)}: the torch.nn layers vcon compresses (their subclasses included)")
    return LAYERS[name].type


def check(cfg: Any) -> tuple[type, ...]:
    """Every check of the ``target`` config that needs no model; returns the classes ``types`` names."""
    require(cfg.within in WITHIN, "target.within", cfg.within, f"one of {WITHIN}")
    return tuple(_module_type(t) for t in cfg.types)


def from_config(model: nn.Module, cfg: Any) -> FilterFn:
    """The filter the ``target`` config describes: type in ``types``, inside the blocks (or ``all``), name matching
    one of ``include`` and none of ``exclude`` (shell-style patterns over full module names)."""
    types = check(cfg)
    where = in_blocks(model, types) if cfg.within == "blocks" else lambda module, name: isinstance(module, types)
    include, exclude = list(cfg.include), list(cfg.exclude)

    def chosen(module: nn.Module, name: str) -> bool:
        return (where(module, name) and any(fnmatch.fnmatchcase(name, p) for p in include)
                and not any(fnmatch.fnmatchcase(name, p) for p in exclude))

    chosen.description = f"target (within={cfg.within}, types={list(cfg.types)}, include={include}, exclude={exclude})"
    return chosen


def matching(model: nn.Module, filter_fn: FilterFn) -> dict[str, nn.Module]:
    """The modules ``filter_fn`` picks, by full name; an error if none (naming the ``target`` settings when the
    filter came from them)."""
    chosen = {name: module for name, module in model.named_modules() if name and filter_fn(module, name)}
    what = getattr(filter_fn, "description", "filter_fn")
    foreign = [f"{name} ({type(m).__name__})" for name, m in chosen.items()
               if kind_of(m) is None]
    if foreign:
        raise ConfigError(f"{what} picks {len(foreign)} module(s) that vcon cannot compress, e.g. {foreign[0]}; "
                          f"allowed: torch.nn {sorted(LAYERS)} (subclasses included)")
    if not chosen:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:8]
        raise ConfigError(f"{what} matches no module of this {type(model).__name__}; its nn.Linear modules include "
                          f"{linears}")
    return chosen


def select(model: nn.Module, cfg: Any) -> dict[str, nn.Module]:
    """The modules the ``target`` config picks."""
    return matching(model, from_config(model, cfg))
