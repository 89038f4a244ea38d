"""Models (the ``model`` config group): a pretrained image classifier from a local folder or a hub id, or a ViT
built from its configuration with random weights."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from vcon import hub
from vcon.errors import require

log = logging.getLogger(__name__)
SOURCES = ("pretrained", "scratch")


def check(cfg: Any) -> None:
    require(cfg.source in SOURCES, "model.source", cfg.source, f"one of {SOURCES}")
    require(len(cfg.mean) == len(cfg.std) and min(cfg.std) > 0, "model.std", list(cfg.std),
            "positive values, as many as model.mean")


def needs_hub(cfg: Any) -> bool:
    return cfg.source == "pretrained" and not Path(str(cfg.pretrained)).is_dir()


def build(cfg: Any, num_classes: int) -> nn.Module:
    """``source: pretrained`` loads ``pretrained`` (a folder in ``save_pretrained`` format, or a hub id) and gives
    it a ``num_classes`` head if its own differs; ``source: scratch`` builds ``ViTConfig(**cfg.vit)``."""
    from transformers import AutoModelForImageClassification, ViTConfig, ViTForImageClassification

    check(cfg)
    if cfg.source == "scratch":
        return ViTForImageClassification(ViTConfig(**cfg.vit, num_labels=num_classes))
    kwargs = dict(num_labels=num_classes, ignore_mismatched_sizes=True)
    if needs_hub(cfg):
        model = hub.from_pretrained(AutoModelForImageClassification, str(cfg.pretrained), **kwargs)
    else:
        model = AutoModelForImageClassification.from_pretrained(str(cfg.pretrained), **kwargs)
    log.info("model %s: %.2f M parameters", cfg.name, sum(p.numel() for p in model.parameters()) / 1e6)
    return model


ASSETS = Path(__file__).parent / "assets"  # models shipped inside the package


def asset(name: str) -> str:
    """Path of a model shipped inside the package (``${asset:vit-micro}`` in configs)."""
    return str(ASSETS / name)
