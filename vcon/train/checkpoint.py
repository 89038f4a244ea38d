"""Checkpoints with the full training state, written atomically, the last two kept: a kill at any moment leaves at
least one whole one, and a damaged last one (a failing disk, a copy cut short) falls back to the one before.
Loading runs no code: only tensors, Python values and the numpy arrays of numpy's RNG state are accepted."""
from __future__ import annotations

import logging
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vcon.atomic import write_atomic
from vcon.errors import CheckpointError

log = logging.getLogger(__name__)
FILENAME = "checkpoint.pt"
PREVIOUS = "checkpoint.prev.pt"  # the one before the last
KEYS = {"identity", "progress", "controller", "model", "finished"}  # what every vcon checkpoint holds
# besides tensors and plain Python values, a checkpoint holds numpy's RNG state: a uint32 array
SAFE_GLOBALS = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), np.ndarray(0).__reduce__()[0]]


class Damaged(CheckpointError):
    """A checkpoint file that cannot be read as one (cut short, overwritten, not a torch file)."""


def save(state: dict[str, Any], run_dir: Path) -> Path:
    """Atomically; the last checkpoint becomes the previous one."""
    run_dir = Path(run_dir)
    return write_atomic(run_dir / FILENAME, lambda f: torch.save(state, f), previous=run_dir / PREVIOUS)


def read(path: Path) -> dict[str, Any]:
    """One checkpoint file, loaded with torch's weights-only unpickler and the allow-list above: a file that holds
    anything else is refused unread (``CheckpointError``), one that cannot be read at all is ``Damaged``."""
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Detected pickle protocol")  # a plain pickle: refused just below
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler refused what the file asks for
        paragraphs = [p.strip() for p in str(e).split("\n\n") if p.strip()]  # torch's: advice, the reason, a link
        refused = paragraphs[1] if len(paragraphs) > 2 else paragraphs[0]
        raise CheckpointError(f"{path} is not a vcon checkpoint or was written by something else: it holds what a "
                              f"vcon checkpoint does not ({refused[:200]}); nothing in it was run. Move it out of "
                              "the run folder, or choose another one (hydra.run.dir=...)") from e
    except Exception as e:  # noqa: BLE001  (truncated, overwritten, not a torch file: all the same to the user)
        reason = str(e).split(". ")[0][:200]  # torch's first sentence: the rest is advice for torch users
        raise Damaged(f"{path} is damaged or cut short ({type(e).__name__}: {reason})") from e
    if not isinstance(state, dict) or not KEYS <= set(state):
        raise CheckpointError(f"{path} is not a vcon checkpoint (expected the keys {sorted(KEYS)}); move it out of "
                              "the run folder, or choose another one (hydra.run.dir=...)")
    return state


def load(run_dir: Path) -> dict[str, Any] | None:
    """The run folder's last intact checkpoint, None when it has none. A damaged one is moved aside (renamed, with a
    warning) when an earlier one is intact; when none is, ``CheckpointError`` names them and how to go on."""
    run_dir = Path(run_dir)
    damaged = []
    for path in (run_dir / FILENAME, run_dir / PREVIOUS):
        if not path.exists():
            continue
        try:
            state = read(path)
        except Damaged as e:
            damaged.append((path, e))
            continue
        for bad, error in damaged:
            log.warning("%s: moved aside to %s; resuming from the previous checkpoint, %s", error, _aside(bad), path)
        return state
    if not damaged:
        return None
    names = " and ".join(str(p) for p, _ in damaged)
    raise CheckpointError(f"{'; '.join(str(e) for _, e in damaged)}. No intact checkpoint is left: to start afresh, "
                          f"move {names} aside or choose a new run dir (hydra.run.dir=...)")


def _aside(path: Path) -> Path:
    """Rename ``path`` to the first free ``<name>.damaged[.N]`` beside it (kept for a look, never deleted)."""
    n = 0
    while (aside := path.with_name(f"{path.name}.damaged{f'.{n}' if n else ''}")).exists():
        n += 1
    try:
        path.rename(aside)
    except FileNotFoundError:  # the other processes of a multi-process run read it too: one of them moved it
        pass
    return aside


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
