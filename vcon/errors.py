"""Errors that mean "the run was asked for something it cannot do": reported in one line, before any training."""
from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A setting is wrong. The message names the setting, the bad value and what is allowed."""


def require(ok: bool, setting: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError`` unless ``ok``: ``require(rank > 0, "compression.rank", rank, "an integer >= 1")``."""
    if not ok:
        raise ConfigError(f"{setting}={value!r} is not allowed: expected {allowed}")
