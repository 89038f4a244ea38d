"""Errors that mean "the run was asked for something it cannot do": reported in one line, before any training."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is wrong. The message names the setting, the bad value and what is allowed."""


class ExportError(ValueError):
    """An export cannot be made (run not at β = 0, unreadable or foreign checkpoint, non-empty target, a format
    without a packed form). Raised before anything is written."""


def require(ok: bool, setting: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError`` unless ``ok``: ``require(rank > 0, "compression.rank", rank, "an integer >= 1")``."""
    if not ok:
        raise ConfigError(f"{setting}={value!r} is not allowed: expected {allowed}")
