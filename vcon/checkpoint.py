"""Checkpoints with the full training state, written atomically: a kill at any moment leaves the previous one."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcon.atomic import write_atomic

FILENAME = "checkpoint.pt"


def save(state: dict[str, Any], run_dir: Path) -> Path:
    """Atomically: a kill while saving leaves the previous checkpoint."""
    return write_atomic(Path(run_dir) / FILENAME, lambda f: torch.save(state, f))


def load(run_dir: Path) -> dict[str, Any] | None:
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
