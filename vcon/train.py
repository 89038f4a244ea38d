"""One VCON run (the ``train`` config group): build, blend, fine-tune, evaluate, write results.

Order matters for users: every setting is checked first, the hub is probed before anything is downloaded, and
only then are data and model loaded. A run folder that holds a checkpoint is resumed from it, mid-epoch included;
a finished one is not trained again.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vcon import checkpoint, data, distributed, hub, identity, model, results, schedule, targets, tracking
from vcon.augment import Pipeline
from vcon.blend import Beta, BlendedBranches, blend_, block_gap, drop_originals
from vcon.compression import Compression, from_config as compression_from_config
from vcon.cuda_graph import CapturedStep
from vcon.errors import ConfigError, require
from vcon.preemption import StopRequest

log = logging.getLogger(__name__)


def check(cfg: Any) -> Compression:
    """Every cheap check of the whole config, before anything is loaded. Returns the compression it describes."""
    data.check(cfg.data)
    model.check(cfg.model)
    tracking.check(cfg)
    compression = compression_from_config(cfg.compression)
    require(cfg.vcon.shape in schedule.SHAPES, "vcon.shape", cfg.vcon.shape, f"one of {sorted(schedule.SHAPES)}")
    t = cfg.train
    require(isinstance(t.epochs, int) and t.epochs >= 1, "train.epochs", t.epochs, "an integer >= 1")
    require(isinstance(t.grad_accum, int) and t.grad_accum >= 1, "train.grad_accum", t.grad_accum, "an integer >= 1")
    require(isinstance(t.batch_size, int) and t.batch_size % t.grad_accum == 0, "train.batch_size", t.batch_size,
            f"an integer divisible by train.grad_accum={t.grad_accum}")
    require(t.epoch_size is None or (isinstance(t.epoch_size, int) and t.epoch_size > 0), "train.epoch_size",
            t.epoch_size, "null (a full pass over the training split) or a number of images > 0")
    require(t.lr > 0 and 0 <= t.min_lr <= t.lr and 0 < t.warmup_start_lr <= t.lr, "train.lr/min_lr/warmup_start_lr",
            (t.lr, t.min_lr, t.warmup_start_lr), "0 <= min_lr <= lr and 0 < warmup_start_lr <= lr")
    require(0 <= t.warmup_epochs <= t.epochs, "train.warmup_epochs", t.warmup_epochs, "in [0, train.epochs]")
    require(t.precision in ("auto", "fp32", "bf16"), "train.precision", t.precision, "auto, fp32 or bf16")
    require(t.compile in ("auto", True, False), "train.compile", t.compile, "auto, true or false")
    require(t.cuda_graph in ("auto", True, False), "train.cuda_graph", t.cuda_graph, "auto, true or false")
    require(cfg.device in ("auto", "cpu", "cuda"), "device", cfg.device, "auto, cpu or cuda")
    if cfg.save_pretrained and not compression.identity:
        raise ConfigError(f"save_pretrained=true is not allowed with compression={compression.name}: only dense runs "
                          "(compression=none) are saved in transformers format")
    if cfg.get("export") and compression.identity:
        raise ConfigError("export=true is not allowed with compression=none: nothing is compressed; use "
                          "save_pretrained")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed: no CUDA device is visible; use device=auto or device=cpu")
    if t.cuda_graph is True and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("train.cuda_graph=true is not allowed without a CUDA device (CUDA graphs replay GPU work); "
                          "allowed here: auto or false")
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
def evaluate(net: nn.Module, split: data.Split, pipeline: Pipeline, batch_size: int, autocast: Callable,
             world: distributed.World = distributed.SINGLE) -> float:
    """Top-1 accuracy in percent; with several processes each takes a contiguous share of the split."""
    was_training = net.training
    net.eval()
    lo, hi = len(split) * world.rank // world.size, len(split) * (world.rank + 1) // world.size
    correct = 0
    for start in range(lo, hi, batch_size):
        end = min(start + batch_size, hi)
        with autocast(), torch.compiler.set_stance("force_eager"):  # compiled blocks are for training steps
            predicted = _logits(net, pipeline.eval_batch(split.images[start:end])).argmax(-1)
        correct += int((predicted == split.labels[start:end].to(predicted.device)).sum())
    net.train(was_training)
    return 100.0 * distributed.sum_(correct, world) / len(split)


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint so that a resumed run goes on from exactly here."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # optimizer steps done in the current epoch
    step: int = 0
    loss_sum: float = 0.0  # over the current epoch's steps
    history: list = dataclasses.field(default_factory=list)
    mix_rng: Any = None  # MixUp's generator state, mid-epoch


class Step:
    """One optimizer step on a batch of uint8 images: augmentation on the device, forward and backward (under
    ``autocast``), gradient clipping, AdamW, the LR schedule. ``run`` trains through it and ``bench/train_speed.py``
    times it, so the benchmark measures the code that trains.

    It returns the loss as a device tensor and never waits for the device: the host queues the next step while the
    device still computes this one. Reading the loss (``float``) is the caller's choice, every ``log_every`` steps.
    With ``captured`` (a ``CapturedStep`` around ``train_on``: ``train.cuda_graph``) the step replays a CUDA graph.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: Any, pipeline: Pipeline,
                 autocast: Callable, train: Any, world: distributed.World = distributed.SINGLE,
                 graph_key: Callable[[], Any] | None = None) -> None:
        self.net, self.trained, self.optimizer, self.lr_schedule = net, net, optimizer, lr_schedule
        self.pipeline, self.autocast, self.world = pipeline, autocast, world
        self.grad_accum, self.grad_clip = train.grad_accum, train.grad_clip
        self.captured = CapturedStep(self.train_on, graph_key) if graph_key is not None else None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, mix_rng: torch.Generator) -> torch.Tensor:
        micro = len(labels) // self.grad_accum
        mixes = [t for _ in range(self.grad_accum) for t in self.pipeline.draw_mix(micro, mix_rng)]
        loss = (self.captured or self.train_on)(images, labels, *mixes)
        self.lr_schedule.step()  # on the host, after the step: fills the lr tensor a graph reads
        return loss

    def train_on(self, images: torch.Tensor, labels: torch.Tensor, *mixes: torch.Tensor) -> torch.Tensor:
        """The step on the device, from tensors alone: ``grad_accum`` micro-batches, each with its MixUp draws
        (``mixes``: theirs one after the other, or none)."""
        per = len(mixes) // self.grad_accum
        micro = len(labels) // self.grad_accum
        return self.optimize([self.pipeline.train_batch(part, part_labels, *mixes[i * per:(i + 1) * per])
                              for i, (part, part_labels) in enumerate(zip(images.split(micro), labels.split(micro)))])

    def optimize(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Forward and backward over ``grad_accum`` prepared (inputs, targets) pairs, then one optimizer step."""
        total = None
        for i, (x, y) in enumerate(batches):
            sync = i == len(batches) - 1 or self.world.size == 1
            with contextlib.nullcontext() if sync else self.trained.no_sync(), self.autocast():
                loss = F.cross_entropy(_logits(self.trained, x).float(), y) / len(batches)
                loss.backward()
            total = loss.detach() if total is None else total + loss.detach()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total


def compile_blocks(net: nn.Module) -> int:
    """``torch.compile`` each repeated block (regional compilation): the blocks share one compiled graph, so
    compiling takes seconds, not the minutes a whole-model compile takes, and fuses the element-wise work around
    the matmuls, the weight blends included (the compressed weights themselves are computed before the model's
    forward, all layers at once: ``vcon.blend``). Returns the number of blocks."""
    blocks = [block for name in targets.block_lists(net) for block in net.get_submodule(name)]
    for block in blocks:
        block.compile()
    return len(blocks)


def autocast_for(train: Any, device: torch.device) -> Callable:
    """bf16 autocast (fp32 master weights and optimizer) where ``train.precision`` asks for it: ``auto`` is bf16 on
    CUDA, fp32 on the CPU."""
    use_bf16 = train.precision == "bf16" or (train.precision == "auto" and device.type == "cuda")
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def compiles(train: Any, device: torch.device) -> bool:
    """Whether ``train.compile`` asks for ``torch.compile`` (of the blocks and of RandAugment) on ``device``."""
    return train.compile is True or (train.compile == "auto" and device.type == "cuda")


def captures(train: Any, device: torch.device, world: distributed.World = distributed.SINGLE) -> bool:
    """Whether ``train.cuda_graph`` asks for the step as a CUDA graph: ``auto`` is on for one process on CUDA
    (``run`` refuses ``true`` elsewhere)."""
    return train.cuda_graph is True or (train.cuda_graph == "auto" and device.type == "cuda" and world.size == 1)


def _lr_as_device_tensor(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict``: the loaded param groups bring their own lr (a float from an eager run, or a tensor
    mapped to the CPU); a captured step reads it from a tensor on the parameters' device."""
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), device=group["params"][0].device)


def build_model(cfg: Any, compression: Compression, num_classes: int,
                device: torch.device) -> tuple[nn.Module, dict[str, nn.Module], Beta, Pipeline]:
    """The configured model on ``device`` with its targets blended (at β = 1, still the dense model), the β that
    drives them, and the input pipeline."""
    net = model.build(cfg.model, num_classes).to(device)
    chosen = targets.select(net, cfg.target)
    compression.check(chosen)
    beta = blend_(net, compression, list(chosen))
    pipeline = Pipeline(cfg.train.augment, net.config.image_size, net.config.num_channels, list(cfg.model.mean),
                        list(cfg.model.std), num_classes, device, compiled=compiles(cfg.train, device))
    return net, chosen, beta, pipeline


def build_step(net: nn.Module, pipeline: Pipeline, train: Any, steps_per_epoch: int, total_steps: int,
               device: torch.device, world: distributed.World = distributed.SINGLE, beta: Beta | None = None) -> Step:
    """AdamW (fused on CUDA) with warm-up and cosine decay over the parameters ``net`` trains now (after any
    ``drop_originals``), the blocks compiled where ``train.compile`` says, and the ``Step`` that uses them, captured
    as a CUDA graph where ``train.cuda_graph`` says (then the lr is a device tensor and the optimizer capturable, and
    the graph is captured again whenever ``beta``'s phase or the trained parameters change)."""
    captured = captures(train, device, world)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad],
                                  lr=torch.tensor(train.lr, device=device) if captured else train.lr,
                                  weight_decay=train.weight_decay, fused=device.type == "cuda" or captured,
                                  capturable=captured)  # fused: capturable on any device, so tests build it on CPUs
    lr_factor = WarmupCosine(round(train.warmup_epochs * steps_per_epoch), total_steps,
                             train.warmup_start_lr / train.lr, train.min_lr / train.lr)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    if compiles(train, device):
        log.info("compiled %d blocks with torch.compile", compile_blocks(net))

    def graph_key() -> tuple:  # what a captured step's kernels depend on: β's phase, the parameters trained
        return beta.phase if beta else None, sum(len(g["params"]) for g in optimizer.param_groups)

    if captured:
        optimizer.register_load_state_dict_post_hook(_lr_as_device_tensor)
        log.info("each training step replays a CUDA graph (train.cuda_graph=%s)", train.cuda_graph)
    return Step(net, optimizer, lr_schedule, pipeline, autocast_for(train, device), train, world,
                graph_key if captured else None)


def run(cfg: Any, run_dir: str | Path, on_epoch_end: Callable[[int], None] | None = None, run_name: str | None = None,
        group: str | None = None) -> dict[str, Any] | None:
    """Train the configured run in ``run_dir``; returns its results (also in ``results.json``) on the main process.
    ``run_name`` and ``group`` name it for W&B (default: the folder's name, no group)."""
    started = time.perf_counter()
    run_dir = Path(run_dir)
    compression = check(cfg)
    if model.needs_hub(cfg.model):
        hub.require_reachable(f"model {cfg.model.pretrained!r}")
    if data.needs_hub(cfg.data):
        hub.require_reachable(f"dataset {cfg.data.hub_id!r}")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
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
        return _run(cfg, run_dir, compression, device, world, started, on_epoch_end, run_name or run_dir.name, group)


def _run(cfg: Any, run_dir: Path, compression: Compression, device: torch.device, world: distributed.World,
         started: float, on_epoch_end: Callable[[int], None] | None, run_name: str,
         group: str | None) -> dict[str, Any] | None:
    state = checkpoint.load(run_dir)
    ident = identity.identity(cfg)
    if state is not None and state["identity"] != ident:
        differs = sorted(k for k in set(ident) | set(state["identity"]) if state["identity"].get(k) != ident.get(k))
        raise ConfigError(f"{run_dir} holds a checkpoint of another run (differs in {differs}); choose a new "
                          "run dir (hydra.run.dir=...) or the same settings to resume it")
    if state is not None and state["finished"] and (run_dir / "results.json").exists():
        log.info("%s already finished; results.json kept as it is", run_dir)
        return json.loads((run_dir / "results.json").read_text()) if world.main else None

    checkpoint.seed_everything(cfg.seed + world.rank)
    dataset = data.load(cfg.data).to(device)  # on a GPU, batches are then gathered there: no copies per step
    t = cfg.train
    epoch_images = min(t.epoch_size or len(dataset.train), len(dataset.train))
    steps_per_epoch = epoch_images // t.batch_size
    require(steps_per_epoch >= 1, "train.batch_size", t.batch_size, f"at most the {epoch_images} images an epoch")
    total_steps = t.epochs * steps_per_epoch
    beta_schedule = schedule.from_config(cfg.vcon, steps_per_epoch, total_steps) if not compression.identity else None

    net, chosen, beta, pipeline = build_model(cfg, compression, dataset.num_classes, device)
    autocast = autocast_for(t, device)
    evaluate_on = lambda split: evaluate(net, split, pipeline, t.eval_batch_size, autocast, world)  # noqa: E731
    dense_acc = state["dense_test_acc"] if state else evaluate_on(dataset.test)  # β = 1: the dense model
    log.info("dense test accuracy %.2f %%; %s", dense_acc, "dense fine-tuning" if compression.identity else
             f"compressing {len(chosen)} modules with {compression}")

    progress = Progress(**state["progress"]) if state else Progress()
    beta.value = beta_schedule.beta(progress.step) if beta_schedule else 1.0
    if beta_schedule and beta.value == 0:
        drop_originals(net)
    step = build_step(net, pipeline, t, steps_per_epoch, total_steps, device, world, beta)
    optimizer, lr_schedule = step.optimizer, step.lr_schedule
    if state:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_schedule"])
        rng = state["rng"]
        checkpoint.set_rng_state(rng[world.rank] if len(rng) == world.size else rng[0])
        log.info("resumed %s at epoch %d, batch %d, step %d, beta %.4f", run_dir, progress.epoch, progress.batch,
                 progress.step, beta.value)

    def parallel() -> nn.Module:  # rebuilt when the original branches are dropped: DDP fixes its parameter list
        if world.size == 1:
            return net
        two_branches = any(isinstance(m, BlendedBranches) and m.original is not None for m in net.modules())
        return DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                       find_unused_parameters=two_branches)  # β = 1 skips the compressed branch

    def save(finished: bool) -> None:
        rng = distributed.gather(checkpoint.rng_state(), world)
        if world.main:
            checkpoint.save({"identity": ident, "progress": dataclasses.asdict(progress), "beta": beta.value,
                             "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                             "lr_schedule": lr_schedule.state_dict(), "rng": rng, "dense_test_acc": dense_acc,
                             "finished": finished}, run_dir)
        distributed.barrier(world)

    tracker = tracking.Tracker(cfg, run_dir, run_name, group, progress.step if state else None) if world.main else None
    probe = dataset.val.images[:64]  # a fixed batch on which the gap between original and compressed blocks is measured
    try:
        step.trained = parallel()
        last_save = time.monotonic()
        with StopRequest() as stop:
            while progress.epoch < t.epochs:
                epoch = progress.epoch
                order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(
                    cfg.seed * 100_003 + epoch))[:epoch_images].to(dataset.train.labels.device)
                mix_rng = torch.Generator().manual_seed(cfg.seed * 100_019 + epoch + 7919 * world.rank)
                if progress.mix_rng is not None:
                    mix_rng.set_state(progress.mix_rng)
                epoch_start, epoch_first_batch = time.perf_counter(), progress.batch
                bar = tqdm(total=steps_per_epoch, initial=progress.batch, desc=f"epoch {epoch + 1}/{t.epochs}",
                           unit="step", leave=False, dynamic_ncols=True,
                           disable=not (world.main and sys.stderr.isatty()))  # SLURM logs get the epoch lines alone
                last_log = time.perf_counter()
                pending = []  # losses of the steps since the last read, still on the device
                while progress.batch < steps_per_epoch:
                    first = progress.batch * t.batch_size
                    batch = order[first:first + t.batch_size][world.rank::world.size]  # this process's share
                    loss = step(dataset.train.images[batch], dataset.train.labels[batch], mix_rng)
                    progress.step += 1
                    progress.batch += 1
                    if world.size > 1:  # one collective a step: the mean loss, and whether any process must stop
                        shared = torch.stack([loss.double(), torch.tensor(  # on the device: NCCL needs it there
                            float(stop.requested), dtype=torch.float64, device=loss.device)])
                        torch.distributed.all_reduce(shared)
                        loss = shared[0] / world.size
                        if shared[1] and not stop.requested:
                            stop.signum = stop.signum or 15
                    pending.append(loss)
                    if beta_schedule:  # β for the next step; at 0 the original branches go, before any checkpoint
                        beta.value = beta_schedule.beta(progress.step)
                        if beta.value == 0 and drop_originals(net, optimizer):
                            log.info("beta reached 0 at step %d: original branches dropped", progress.step)
                            step.trained = parallel()
                    logging_step = progress.step % t.log_every == 0
                    overdue = time.monotonic() - last_save > 60 * t.checkpoint_every_min
                    if logging_step or stop.requested or overdue or progress.batch == steps_per_epoch:
                        losses = [float(v) for v in torch.stack(pending).cpu()]  # the one wait for the device
                        pending.clear()
                        progress.loss_sum += sum(losses)
                        loss_value = losses[-1]
                        if not all(map(math.isfinite, losses)):
                            raise FloatingPointError(f"loss is {loss_value} at step {progress.step} (epoch "
                                                     f"{epoch + 1}; checked every train.log_every steps)")
                    bar.update()
                    if logging_step:
                        now = time.perf_counter()
                        speed = t.log_every * t.batch_size / (now - last_log)
                        last_log = now
                        bar.set_postfix(loss=f"{loss_value:.4f}", beta=f"{beta.value:.3f}", img_s=f"{speed:.0f}")
                        if tracker:
                            tracker.log({"train/loss": loss_value, "train/lr": float(optimizer.param_groups[0]["lr"]),
                                         "vcon/beta": beta.value, "train/images_per_s": speed}, progress.step)
                    if (stop.requested or overdue) and progress.batch < steps_per_epoch:
                        progress.mix_rng = mix_rng.get_state()
                        save(finished=False)
                        last_save = time.monotonic()
                        log.info("checkpoint at epoch %d, batch %d, step %d", epoch, progress.batch, progress.step)
                        if stop.requested:
                            stop.hand_over()

                bar.close()
                seconds = time.perf_counter() - epoch_start
                metrics = {"epoch": epoch + 1, "step": progress.step, "beta": beta.value,
                           "loss": progress.loss_sum / steps_per_epoch, "lr": float(optimizer.param_groups[0]["lr"]),
                           "images_per_s": (steps_per_epoch - epoch_first_batch) * t.batch_size / seconds}
                with beta.fixed(0.0):
                    metrics["val_acc_compressed"] = evaluate_on(dataset.val)
                if 0 < beta.value < 1:
                    metrics["val_acc_blended"] = evaluate_on(dataset.val)
                net.eval()
                gap = block_gap(net, lambda: _logits(net, pipeline.eval_batch(probe)))
                net.train()
                if gap is not None:
                    metrics["block_gap"] = gap
                progress.history.append(metrics)
                progress.epoch, progress.batch, progress.loss_sum, progress.mix_rng = epoch + 1, 0, 0.0, None
                if tracker:
                    figures = results.figures(net, compression, list(chosen))
                    tracker.log({f"epoch/{k}": v for k, v in metrics.items() if k not in ("epoch", "step", "lr")}
                                | {f"compression/{k}": v for k, v in figures.items() if k != "name"}
                                | {"epoch": epoch + 1}, progress.step)
                log.info("epoch %d/%d  step %d  beta %.3f  loss %.4f  val %s%.2f %% at beta=0  %.0f img/s", epoch + 1,
                         t.epochs, progress.step, beta.value, metrics["loss"],
                         f"{metrics['val_acc_blended']:.2f} % blended, " if "val_acc_blended" in metrics else "",
                         metrics["val_acc_compressed"], metrics["images_per_s"])
                save(finished=progress.epoch == t.epochs)
                last_save = time.monotonic()
                if stop.requested and progress.epoch < t.epochs:
                    stop.hand_over()
                if on_epoch_end is not None:
                    on_epoch_end(progress.epoch)
    except BaseException:  # a signal or an error: flush what was logged, so a resumed run continues it
        if tracker:
            tracker.finish(exit_code=1)
        raise

    with beta.fixed(0.0) if beta_schedule else contextlib.nullcontext():
        test_acc = evaluate_on(dataset.test)
    if not world.main:
        return None
    figures = results.figures(net, compression, list(chosen))
    final = {"test_acc": test_acc, "dense_test_acc": dense_acc} | {
        f"compression/{k}": v for k, v in figures.items() if k != "name"}
    tracker.log({"final/test_acc": test_acc}, progress.step)
    tracker.finish(final)
    summary = {
        "dense_test_acc": dense_acc,
        "test_acc": test_acc,
        "val_acc": progress.history[-1]["val_acc_compressed"],
        "beta": beta.value,
        "step": progress.step,
        "q_steps": beta_schedule.q_steps if beta_schedule else None,
        "steps_per_epoch": steps_per_epoch,
        "processes": world.size,
        "compression": figures,
        "history": progress.history,
        "wall_time_s": time.perf_counter() - started,
        "device": str(device),
    }
    if cfg.save_pretrained:
        net.save_pretrained(run_dir / "pretrained")
    results.write(summary, run_dir)
    if cfg.get("export"):  # real compressed storage of the β = 0 model, its figures added to results.json
        from vcon import export
        summary["export"] = export.export_model(net, compression, list(chosen), run_dir / "export") | {
            "folder": str(run_dir / "export")}
        results.write(summary, run_dir)
    return summary
