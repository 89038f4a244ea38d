"""One run of the app (``run.py``, a sweep's job, a SLURM task): check the whole config, probe the hub, take the run
folder's lock, resume its checkpoint or start afresh, train (``vcon.train.loop.Training``), write its results.

Order matters for users: every setting is checked first, the hub is probed before anything is downloaded, and only
then are data and model loaded. A run folder that holds a checkpoint is resumed from it, mid-epoch included; a
finished one is not trained again.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf

from vcon import data, hub, model
from vcon.app import identity, tracking
from vcon.app.config import validate
from vcon.atomic import write_atomic
from vcon.compression import Compression
from vcon.compression import from_config as compression_from_config
from vcon.core import targets
from vcon.core.controller import plan
from vcon.errors import ConfigError, require
from vcon.method import Method
from vcon.method import from_config as method_from_config
from vcon.shipped import CONF
from vcon.train import checkpoint, distributed
from vcon.train.loop import Training

log = logging.getLogger(__name__)


def check(cfg: Any) -> tuple[Compression, Method]:
    """Every cheap check of the whole config, before anything is loaded: each key against its schema
    (``vcon.app.config.validate``), then how the keys fit together. Returns the compression and the method it describes."""
    validate(cfg)
    data.check(cfg.data)
    model.check(cfg.model)
    given, taken = data.inputs(cfg.data), model.inputs(cfg.model)
    if given != taken:
        allowed = sorted(name for name, loader in data.LOADERS.items() if loader.inputs == taken)
        raise ConfigError(f"data={cfg.data.name} is not allowed with model={cfg.model.name}: the data is {given}, "
                          f"the model takes {taken}; allowed data for it: {allowed}")
    model.input_kind(cfg.model).check_with(cfg.data, cfg.model)
    targets.check(cfg.target)
    compression, method = compression_from_config(cfg.compression), method_from_config(cfg.method)
    method.check(compression)
    skeleton = model.skeleton(cfg.model)  # which modules each group takes, and whether it fits them: no weight read
    if skeleton is not None:
        plan(skeleton, compression, targets.from_config(skeleton, cfg.target), method)
    _check_train(cfg.train, cfg.data)
    if cfg.save_pretrained and not compression.dense:
        raise ConfigError(f"save_pretrained=true is not allowed with compression={compression.name}: only dense runs "
                          "(compression=none) are saved in transformers format")
    if cfg.get("export") and compression.dense:
        raise ConfigError("export=true is not allowed with compression=none: nothing is compressed; use "
                          "save_pretrained")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is visible; use device=auto or device=cpu")
    t = cfg.train
    if t.cuda_graph is True and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("train.cuda_graph=true is not allowed without a CUDA device (CUDA graphs replay GPU work); "
                          "allowed here: auto or false")
    if t.cuda_graph is True and not method.capturable:
        raise ConfigError(f"train.cuda_graph=true is not allowed with method={method.name}: its strength changes the "
                          "step's shapes at every step, which a replayed graph cannot follow; allowed: auto (off "
                          f"for {method.name} runs) or false")
    return compression, method


def _check_train(t: Any, data_cfg: Any) -> None:
    """How the ``train`` keys fit together, and with the data (each key's own range is its schema's)."""
    require(t.batch_size % t.grad_accum == 0, "train.batch_size", t.batch_size,
            f"an integer >= 1 divisible by train.grad_accum={t.grad_accum}")
    for key, images in (("train.epoch_size", t.epoch_size), ("data.train_size", data_cfg.get("train_size"))):
        require(images is None or images >= t.batch_size, key, images,
                f"null or at least train.batch_size={t.batch_size} examples (an epoch of whole batches)")
    for key in ("min_lr", "warmup_start_lr"):
        require(t[key] <= t.lr, f"train.{key}", t[key], f"a number in [0, train.lr={t.lr}]")
    require(t.warmup_epochs <= t.epochs, "train.warmup_epochs", t.warmup_epochs,
            f"a number of epochs in [0, train.epochs={t.epochs}]")


def uses_cuda(cfg: Any) -> bool:
    """``device``: cuda, or auto where a CUDA device is visible (``check`` has refused cuda without one)."""
    return cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())


def run(cfg: Any, run_dir: str | Path, on_epoch_end: Callable[[int], None] | None = None, run_name: str | None = None,
        group: str | None = None) -> dict[str, Any] | None:
    """Train the configured run in ``run_dir``; returns its results (also in ``results.json``) on the main process.
    ``run_name`` and ``group`` name it for W&B (default: the folder's name, no group)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    compression, method = check(cfg)
    if model.needs_hub(cfg.model):
        hub.require_reachable(f"model {cfg.model.pretrained!r}")
    if data.needs_hub(cfg.data):
        hub.require_reachable(f"dataset {cfg.data.hub_id!r}")
    use_cuda = uses_cuda(cfg)
    world = distributed.init(use_cuda)
    require(cfg.train.batch_size % (world.size * cfg.train.grad_accum) == 0, "train.batch_size",
            cfg.train.batch_size, f"divisible by processes x grad_accum = {world.size} x {cfg.train.grad_accum}")
    if not world.main:
        logging.getLogger("vcon").setLevel(logging.WARNING)
    device = torch.device(f"cuda:{world.local_rank}" if use_cuda else "cpu")
    if cfg.train.cuda_graph is True and world.size > 1:
        raise ConfigError(f"train.cuda_graph=true is not allowed with {world.size} processes (a graph would capture "
                          "DDP's collectives); allowed there: auto (off with several processes) or false")
    with identity.exclusive(run_dir) if world.main else contextlib.nullcontext():
        state = _checkpoint_of(cfg, run_dir)
        if state is not None and state["finished"] and (run_dir / "results.json").exists():
            log.info("%s already finished; results.json kept as it is", run_dir)
            return json.loads((run_dir / "results.json").read_text()) if world.main else None
        start = None
        if cfg.model.get("start_finetuned") and not compression.dense:  # resumed too: it is a distilled run's teacher
            fine_tuning = time.perf_counter()
            start = fine_tuned(cfg, run_dir, group)
            started += time.perf_counter() - fine_tuning  # the run's own wall time: its dense fine-tune has its own
        training = Training(cfg, run_dir, identity.identity(cfg), compression, method, device, world, state, start)
        tracker = (tracking.Tracker(cfg, run_dir, run_name or run_dir.name, group,
                                    training.progress.step if training.resumed else None) if world.main else None)
        training.fit(tracker, on_epoch_end)
        return training.finish(started)


def dense_config(cfg: Any) -> Any:
    """The dense fine-tune of the run ``cfg``: the same settings with compression=none and method=vcon, the one
    method a dense run takes (both, with ``vcon``, ``distill`` and ``model.start_finetuned``, leave its identity: the
    runs of every method share it)."""
    dense = copy.deepcopy(cfg)
    for group, option in (("compression", "none"), ("method", "vcon")):
        dense[group] = OmegaConf.load(CONF / group / f"{option}.yaml")  # what group=option composes
    dense.model.start_finetuned, dense.export = False, False
    return dense


def fine_tuned(cfg: Any, run_dir: Path, group: str | None = None) -> dict[str, torch.Tensor]:
    """``model.start_finetuned``: the final weights of the run's dense fine-tune, in its own run folder beside
    ``run_dir`` (a sweep's folder holds it with the sweep's runs; it is the sweep's own dense run, if it has one).
    Trained there first unless it is finished: its folder's lock makes the other jobs of a sweep wait, so it trains
    once. Read back with the checkpoint loader, which runs no code."""
    dense = dense_config(cfg)
    dense_dir = run_dir.parent / identity.run_id(dense)
    saved = dense_dir / ".hydra" / "config.yaml"
    if not saved.exists():  # a run folder as Hydra makes one: a sweep's table lists it, vcon-report reads it
        saved.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(saved, OmegaConf.to_yaml(dense))
    log.info("model.start_finetuned: starting from the dense fine-tune in %s", dense_dir)
    run(dense, dense_dir, run_name=dense_dir.name, group=group)
    return checkpoint.load(dense_dir)["model"]


def _checkpoint_of(cfg: Any, run_dir: Path) -> dict[str, Any] | None:
    """The run folder's checkpoint, if any; refused when it belongs to another configuration."""
    state = checkpoint.load(run_dir)
    ident = identity.identity(cfg)
    if state is not None and state["identity"] != ident:
        differs = sorted(k for k in set(ident) | set(state["identity"]) if state["identity"].get(k) != ident.get(k))
        raise ConfigError(f"{run_dir} holds a checkpoint of another run (differs in {differs}); choose a new "
                          "run dir (hydra.run.dir=...) or the same settings to resume it")
    return state
