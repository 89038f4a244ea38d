"""Which modules to compress, chosen by type and name patterns, never by a library's internal attribute names.

``within: blocks`` finds the model's transformer blocks structurally: the outermost ``nn.ModuleList`` whose entries
are two or more modules of one class. For a ViT that is the encoder's layer list, whatever transformers calls it,
so the patch embedding (a convolution before the blocks) and the classifier head (after them) are never chosen.
"""
from __future__ import annotations

import fnmatch
from typing import Any

from torch import nn

from vcon.errors import ConfigError, require

WITHIN = ("blocks", "all")


def block_lists(model: nn.Module) -> list[str]:
    """Names of the outermost ModuleLists of repeated same-class blocks."""
    found: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        if isinstance(module, nn.ModuleList) and len(module) >= 2 and len({type(m) for m in module}) == 1:
            found.append(name)
    return found


def _module_type(name: str) -> type:
    cls = getattr(nn, name, None)
    require(isinstance(cls, type) and issubclass(cls, nn.Module), "target.types", name,
            "names of torch.nn module classes, e.g. Linear")
    return cls


def select(model: nn.Module, cfg: Any) -> dict[str, nn.Module]:
    """The modules the ``target`` config picks: type in ``types``, inside the blocks (or ``all``), name matching
    one of ``include`` and none of ``exclude`` (shell-style patterns over full module names)."""
    require(cfg.within in WITHIN, "target.within", cfg.within, f"one of {WITHIN}")
    types = tuple(_module_type(t) for t in cfg.types)
    prefixes = block_lists(model) if cfg.within == "blocks" else [""]
    if not prefixes:
        raise ConfigError("target.within=blocks found no repeated blocks (an nn.ModuleList of same-class modules) "
                          "in this model; use target.within=all with target.include patterns")
    chosen = {}
    for name, module in model.named_modules():
        inside = any(name.startswith(p + ".") or p == "" for p in prefixes)
        if (inside and isinstance(module, types)
                and any(fnmatch.fnmatchcase(name, pat) for pat in cfg.include)
                and not any(fnmatch.fnmatchcase(name, pat) for pat in cfg.exclude)):
            chosen[name] = module
    if not chosen:
        candidates = [n for n, m in model.named_modules() if isinstance(m, types)][:8]
        raise ConfigError(f"target (within={cfg.within}, types={list(cfg.types)}, include={list(cfg.include)}, "
                          f"exclude={list(cfg.exclude)}) matches no module; modules of those types include "
                          f"{candidates}")
    return chosen
