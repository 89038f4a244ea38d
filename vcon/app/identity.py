"""A run's identity: what it computes, derived from its resolved config, so that the same settings always land in the
same folder. Launching a sweep again then finds its finished runs (skipped) and unfinished ones (resumed)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from vcon.compression import REGISTRY
from vcon.model import ASSETS
from vcon.schedule import transition_length

# Sections that define what a run computes. Not in it: where and how it runs (device, launcher, output folders)
# and settings that change no number beyond float rounding (logging cadence, evaluation batch size, compilation,
# CUDA graphs: a run started eager may resume compiled).
SECTIONS = ("seed", "model", "data", "compression", "method", "vcon", "target", "train", "distill")
ONE_SHOT = {"shape": "linear", "epochs": 0, "steps": None}  # Q = 0, however it was asked for
# Settings added after runs were made, with the value that behaves as those runs did: left out of the identity at
# that value, so that finished runs keep their folders.
SINCE = {("model", "inputs"): "image", ("train", "decay"): "cosine", ("data", "stream"): "auto",
         ("data", "bad_images"): "stop", ("model", "start_finetuned"): False}
IGNORED = {"train": ("log_every", "eval_batch_size", "checkpoint_every_min", "compile", "cuda_graph"),
           "data": ("workers",)}


def identity(cfg: DictConfig) -> dict[str, Any]:
    raw = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [s for s in SECTIONS if s in cfg]), resolve=True)
    for key in ("pretrained", "tokenizer"):
        path = raw.get("model", {}).get(key)
        if isinstance(path, str) and Path(path).parent == ASSETS:
            # a shipped model by name, not by where this checkout is: a run stays the same run in another clone
            raw["model"][key] = f"asset:{Path(path).name}"
    for section, keys in IGNORED.items():
        for key in keys:
            raw.get(section, {}).pop(key, None)
    kind = REGISTRY.get(raw.get("compression", {}).get("name"))  # the class: its settings are checked later
    if kind is not None and kind.dense:  # a dense run has no transition: vcon.epochs=0 and 12 are the same run
        raw.pop("vcon", None)
        raw.pop("method", None)
        raw.pop("distill", None)  # nor a teacher (vcon.train.loop.teacher_for)
        raw.get("model", {}).pop("start_finetuned", None)  # a dense run is its own fine-tune
    elif "vcon" in raw and transition_length(raw["vcon"])[0] == 0 and not _own_transition(raw.get("compression")):
        # one-shot, whatever the method and shape (unless a recipe's group has a transition of its own)
        raw["vcon"] = dict(ONE_SHOT)
        raw.pop("method", None)
    if raw.get("method") == {"name": "vcon"}:  # the default: runs from before methods existed keep their ids
        raw.pop("method")
    if not _distills(raw.get("distill")):  # no teacher, whatever its temperature: the runs from before distillation
        raw.pop("distill", None)
    for (section, key), value in SINCE.items():  # likewise the settings added later, at their old behaviour
        if raw.get(section, {}).get(key, value) == value:
            raw.get(section, {}).pop(key, None)
    return raw


def _own_transition(node: Any) -> bool:
    """Whether a part of the compression's config sets a transition of its own (a recipe group's ``vcon`` keys)."""
    if isinstance(node, dict):
        return "vcon" in node or any(_own_transition(v) for v in node.values())
    return isinstance(node, list) and any(map(_own_transition, node))


def _distills(settings: dict[str, Any] | None) -> bool:
    return settings is not None and (settings.get("alpha", 0) != 0 or settings.get("hidden", 0) != 0)


def run_id(cfg: DictConfig) -> str:
    """``<model>_<data>_<compression>[-<method>][-q<Q>][-kd]_s<seed>_<hash>`` (kd: taught by the dense model):
    readable, and unique through the hash."""
    ident = identity(cfg)
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    compression = ident["compression"]["name"]
    if "method" in ident:  # not VCON, the default
        compression += f"-{ident['method']['name']}"
    if "vcon" in ident:
        compression += f"-q{transition_length(ident['vcon'])[0]}"
    if "distill" in ident:
        compression += "-kd"
    return f"{ident['model']['name']}_{ident['data']['name']}_{compression}_s{ident['seed']}_{digest}"


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock: a second process with the same identity (the same run in two sweeps, or a sweep
    launched twice) waits here, then finds the run finished or resumes it, instead of training it twice at once."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
