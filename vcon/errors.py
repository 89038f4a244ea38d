"""Expected failures: what a run, an export or a report cannot do for a reason outside vcon (a setting, the data, the
disk, a diverging run, a damaged or foreign file). The entry points print their message alone, in one or two lines,
and exit 2; any other exception is a bug in vcon and keeps its traceback."""
from __future__ import annotations

import sys
from typing import Any


class VconError(Exception):
    """An expected failure. The message says what happened, what was kept, and what to do."""


class ConfigError(VconError, ValueError):
    """A setting is wrong. The message names the setting, the bad value and what is allowed."""


class ExportError(VconError, ValueError):
    """An export cannot be made (run not at β = 0, unreadable or foreign checkpoint, non-empty target, a format
    without a packed form). Raised before anything is written."""


class CheckpointError(VconError):
    """A checkpoint file cannot be used: damaged (cut short, not a torch file) or foreign (it holds what a vcon
    checkpoint does not; nothing in it was run)."""


class DiskFull(VconError, OSError):
    """The disk filled up while a file was written; the file's previous version is kept."""


class Diverged(VconError, FloatingPointError):
    """The training loss is not finite."""


def require(ok: bool, setting: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError`` unless ``ok``: ``require(rank > 0, "compression.rank", rank, "an integer >= 1")``."""
    if not ok:
        raise ConfigError(f"{setting}={value!r} is not allowed: expected {allowed}")


def say(program: str, error: VconError) -> int:
    """Print an expected failure as ``program: error: message`` on stderr; returns the exit status, 2."""
    print(f"{program}: error: {error}", file=sys.stderr)
    return 2
