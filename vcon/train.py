"""One VCON run (the ``train`` config group): build, blend, fine-tune, evaluate, write results.

Order matters for users: every setting is checked first, the hub is probed before anything is downloaded, and
only then are data and model loaded. A run dir that holds a checkpoint is resumed from it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from vcon import checkpoint, data, hub, model, results, schedule, targets
from vcon.augment import Pipeline
from vcon.blend import blend_, drop_originals
from vcon.compression import Compression, from_config as compression_from_config
from vcon.errors import ConfigError, require

log = logging.getLogger(__name__)
# Config sections that define what a run computes: a checkpoint written under other values is not this run's.
IDENTITY = ("seed", "model", "data", "compression", "vcon", "target", "train")


def check(cfg: Any) -> Compression:
    """Every cheap check of the whole config, before anything is loaded. Returns the compression it describes."""
    data.check(cfg.data)
    model.check(cfg.model)
    compression = compression_from_config(cfg.compression)
    require(cfg.vcon.shape in schedule.SHAPES, "vcon.shape", cfg.vcon.shape, f"one of {sorted(schedule.SHAPES)}")
    t = cfg.train
    require(isinstance(t.epochs, int) and t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    require(isinstance(t.grad_accum, int) and t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "an integer >= 1")
    require(isinstance(t.batch_size, int) and t.batch_size % t.grad_accum == 0, "train.batch_size", t.batch_size,
            f"an integer divisible by train.grad_accum={t.grad_accum}")
    require(t.lr > 0 and 0 <= t.min_lr <= t.lr and 0 < t.warmup_start_lr <= t.lr, "train.lr/min_lr/warmup_start_lr",
            (t.lr, t.min_lr, t.warmup_start_lr), "0 <= min_lr <= lr and 0 < warmup_start_lr <= lr")
    require(0 <= t.warmup_epochs <= t.epochs, "train.warmup_epochs", t.warmup_epochs, "in [0, train.epochs]")
    require(t.precision in ("auto", "fp32", "bf16"), "train.precision", t.precision, "auto, fp32 or bf16")
    require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    if cfg.save_pretrained and not compression.identity:
        raise ConfigError(f"save_pretrained=true is not allowed with compression={compression.name}: only dense runs "
                          "(compression=none) are saved in transformers format")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is visible; use device=auto or device=cpu")
    return compression


class WarmupCosine:
    """LR factor per optimizer step: linear warm-up from ``start`` to the peak, then cosine down to ``end``."""

    def __init__(self, warmup_steps: int, total_steps: int, start: float, end: float) -> None:
        self.warmup_steps, self.total_steps, self.start, self.end = warmup_steps, total_steps, start, end

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1 - self.start) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.end + (1 - self.end) * 0.5 * (1 + math.cos(math.pi * progress))


def _logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net(pixel_values=x).logits


@torch.no_grad()
def evaluate(net: nn.Module, split: data.Split, pipeline: Pipeline, batch_size: int, autocast: Any) -> float:
    """Top-1 accuracy in percent."""
    was_training = net.training
    net.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = pipeline.eval_batch(split.images[start:start + batch_size])
        with autocast():
            predicted = _logits(net, x).argmax(-1).cpu()
        correct += int((predicted == split.labels[start:start + batch_size]).sum())
    net.train(was_training)
    return 100.0 * correct / len(split)


def run(cfg: Any, run_dir: str | Path, on_epoch_end: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the configured run in ``run_dir`` and return its results (also written to ``results.json``)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    compression = check(cfg)
    if model.needs_hub(cfg.model):
        hub.require_reachable(f"model {cfg.model.pretrained!r}")
    if data.needs_hub(cfg.data):
        hub.require_reachable(f"dataset {cfg.data.hub_id!r}")

    state = checkpoint.load(run_dir)
    identity = OmegaConf.to_container(OmegaConf.masked_copy(cfg, list(IDENTITY)), resolve=True)
    if state is not None and state["identity"] != identity:
        differs = sorted(k for k in IDENTITY if state["identity"].get(k) != identity.get(k))
        raise ConfigError(f"{run_dir} holds a checkpoint of another run (differs in {differs}); choose a new "
                          "run dir (hydra.run.dir=...) or the same settings to resume it")
    if state is not None and state["finished"] and (run_dir / "results.json").exists():
        log.info("%s already finished; results.json kept as it is", run_dir)
        return json.loads((run_dir / "results.json").read_text())

    checkpoint.seed_everything(cfg.seed)
    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          "cpu" if cfg.device == "auto" else cfg.device)
    use_bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731

    dataset = data.load(cfg.data)
    net = model.build(cfg.model, dataset.num_classes).to(device)
    chosen = targets.select(net, cfg.target)
    compression.check(chosen)
    t = cfg.train
    require(t.epoch_size is None or (isinstance(t.epoch_size, int) and t.epoch_size > 0), "train.epoch_size",
            t.epoch_size, "null (a full pass over the training split) or a number of images > 0")
    epoch_images = min(t.epoch_size or len(dataset.train), len(dataset.train))
    steps_per_epoch = epoch_images // t.batch_size
    require(steps_per_epoch >= 1, "train.batch_size", t.batch_size, f"at most the {epoch_images} images an epoch")
    total_steps = t.epochs * steps_per_epoch
    beta_schedule = schedule.from_config(cfg.vcon, steps_per_epoch, total_steps) if not compression.identity else None

    pipeline = Pipeline(t.augment, net.config.image_size, net.config.num_channels, list(cfg.model.mean),
                        list(cfg.model.std), dataset.num_classes, device)
    evaluate_on = lambda split: evaluate(net, split, pipeline, t.eval_batch_size, autocast)  # noqa: E731
    dense_acc = state["dense_test_acc"] if state else evaluate_on(dataset.test)
    log.info("dense test accuracy %.2f %%; %s", dense_acc, "dense fine-tuning" if compression.identity else
             f"compressing {len(chosen)} modules with {compression}")

    beta = blend_(net, compression, list(chosen))
    step = state["step"] if state else 0
    beta.value = beta_schedule.beta(step) if beta_schedule else 1.0
    if beta_schedule and beta.value == 0:
        drop_originals(net)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=t.lr,
                                  weight_decay=t.weight_decay, fused=device.type == "cuda")
    lr_factor = WarmupCosine(round(t.warmup_epochs * steps_per_epoch), total_steps, t.warmup_start_lr / t.lr,
                             t.min_lr / t.lr)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    history: list[dict[str, Any]] = []
    if state:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        checkpoint.set_rng_state(state["rng"])
        history = state["history"]
        log.info("resumed %s at epoch %d, step %d, beta %.4f", run_dir, state["epoch"], step, beta.value)

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb"), purge_step=step if state else None)
    micro = t.batch_size // t.grad_accum
    for epoch in range(state["epoch"] if state else 0, t.epochs):
        order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        mix_rng = torch.Generator().manual_seed(cfg.seed * 100_019 + epoch)
        epoch_start, loss_sum = time.perf_counter(), 0.0
        for i in range(steps_per_epoch):
            batch = order[i * t.batch_size:(i + 1) * t.batch_size]
            loss_value = 0.0
            for index in batch.split(micro):
                x, y = pipeline.train_batch(dataset.train.images[index], dataset.train.labels[index], mix_rng)
                with autocast():
                    loss = F.cross_entropy(_logits(net, x).float(), y) / t.grad_accum
                loss.backward()
                loss_value += loss.item()
            if t.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), t.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr_schedule.step()
            step += 1
            if beta_schedule:  # β for the next step; at 0 the original branches go, before any checkpoint
                beta.value = beta_schedule.beta(step)
                if beta.value == 0 and drop_originals(net, optimizer):
                    log.info("beta reached 0 at step %d: original branches dropped", step)
            loss_sum += loss_value
            if step % t.log_every == 0:
                writer.add_scalar("train/loss", loss_value, step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
                writer.add_scalar("vcon/beta", beta.value, step)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"loss is {loss_value} at step {step} (epoch {epoch + 1})")
        seconds = time.perf_counter() - epoch_start
        metrics = {"epoch": epoch + 1, "step": step, "beta": beta.value, "loss": loss_sum / steps_per_epoch,
                   "lr": optimizer.param_groups[0]["lr"], "images_per_s": steps_per_epoch * t.batch_size / seconds}
        with beta.fixed(0.0):
            metrics["val_acc_compressed"] = evaluate_on(dataset.val)
        if 0 < beta.value < 1:
            metrics["val_acc_blended"] = evaluate_on(dataset.val)
        history.append(metrics)
        for key in ("loss", "val_acc_compressed", "val_acc_blended", "images_per_s"):
            if key in metrics:
                writer.add_scalar(f"epoch/{key}", metrics[key], step)
        log.info("epoch %d/%d  step %d  beta %.3f  loss %.4f  val %s%.2f %% at beta=0  %.0f img/s", epoch + 1,
                 t.epochs, step, beta.value, metrics["loss"],
                 f"{metrics['val_acc_blended']:.2f} % blended, " if "val_acc_blended" in metrics else "",
                 metrics["val_acc_compressed"], metrics["images_per_s"])
        checkpoint.save({"identity": identity, "epoch": epoch + 1, "step": step, "beta": beta.value,
                         "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                         "lr_schedule": lr_schedule.state_dict(), "rng": checkpoint.rng_state(),
                         "history": history, "dense_test_acc": dense_acc, "finished": epoch + 1 == t.epochs},
                        run_dir)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    writer.close()

    with beta.fixed(0.0) if beta_schedule else contextlib.nullcontext():
        test_acc = evaluate_on(dataset.test)
    summary = {
        "dense_test_acc": dense_acc,
        "test_acc": test_acc,
        "val_acc": history[-1]["val_acc_compressed"],
        "beta": beta.value,
        "step": step,
        "q_steps": beta_schedule.q_steps if beta_schedule else None,
        "steps_per_epoch": steps_per_epoch,
        "compression": results.figures(net, compression, list(chosen)),
        "history": history,
        "wall_time_s": time.perf_counter() - started,
        "device": str(device),
    }
    if cfg.save_pretrained:
        net.save_pretrained(run_dir / "pretrained")
    results.write(summary, run_dir)
    return summary
