"""Training one run (the ``train`` config group): build, resume, train epoch by epoch, evaluate, write results
(``vcon.app.job`` checks the config and calls it). β is driven by the same ``Controller`` a user's own loop gets from
``vcon.compress_``; the optimizer step itself is ``vcon/train/step.py``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vcon import data, model, schedule
from vcon.compression import Compression
from vcon.core import targets
from vcon.core.controller import Controller, compress_
from vcon.data.augment import Pipeline
from vcon.distill import Distill, Teacher
from vcon.errors import Diverged, require
from vcon.method import VCON, Method
from vcon.method.blend import BlendedBranches, block_gap
from vcon.train import checkpoint, distributed, metrics, results
from vcon.train.preemption import StopRequest
from vcon.train.step import autocast_for, build_step, compiles, logits

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(net: nn.Module, split: data.Split, pipeline: Any, batch_size: int, autocast: Callable,
             metric: str = "accuracy", world: distributed.World = distributed.SINGLE) -> dict[str, float]:
    """Accuracy and the headline ``metric``, in percent (``vcon.train.metrics``); with several processes each takes a
    contiguous share of the split."""
    was_training = net.training
    net.eval()
    lo, hi = len(split) * world.rank // world.size, len(split) * (world.rank + 1) // world.size
    counts = 0
    for inputs, labels in split.batches(torch.arange(lo, hi), batch_size, last=True):
        with autocast(), torch.compiler.set_stance("force_eager"):  # compiled blocks are for training steps
            predicted = logits(net, pipeline.eval_batch(inputs)).argmax(-1)
        counts = counts + metrics.confusion(predicted, labels, len(pipeline.classes))
    net.train(was_training)
    return metrics.compute(distributed.sum_(counts, world), metric)


def keyed(values: dict[str, float], accuracy_key: str, metric_key: str) -> dict[str, float]:
    """``{accuracy_key: accuracy}``, and ``{metric_key: value}`` when the headline metric is another."""
    rest = [v for k, v in values.items() if k != "accuracy"]
    return {accuracy_key: values["accuracy"]} | ({metric_key: rest[0]} if rest else {})


def scalars_of(figures: dict[str, Any], prefix: str = "compression") -> dict[str, float]:
    """The compression figures as logged scalars: ``compression/bits_per_weight``, a recipe's groups'
    ``compression/<group>/bits_per_weight``."""
    out = {f"{prefix}/{k}": v for k, v in figures.items() if k not in ("name", "groups")}
    for group, own in figures.get("groups", {}).items():
        out |= scalars_of(own, f"{prefix}/{group}")
    return out


@dataclasses.dataclass
class Progress:
    """Where training stands; saved in every checkpoint so that a resumed run goes on from exactly here."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # optimizer steps done in the current epoch
    step: int = 0
    loss_sum: float = 0.0  # over the current epoch's steps
    history: list = dataclasses.field(default_factory=list)
    mix_rng: Any = None  # MixUp's generator state, mid-epoch


def build_dense(cfg: Any, num_classes: int, device: torch.device,
                start: dict[str, torch.Tensor] | None = None) -> tuple[nn.Module, Pipeline]:
    """The configured model on ``device``, not yet compressed, and its input pipeline; ``start``: the weights it
    starts from instead (a dense fine-tune's, ``model.start_finetuned``)."""
    net = model.build(cfg.model, num_classes)
    if start is not None:
        net.load_state_dict(start)
    net = net.to(device)
    pipeline = model.input_kind(cfg.model).pipeline(cfg, net, num_classes, device, compiles(cfg.train, device))
    return net, pipeline


def compress_target(cfg: Any, net: nn.Module, compression: Compression, beta_schedule: schedule.Schedule,
                    method: Method = VCON, steps_per_epoch: int = 1, total_steps: int = 1) -> Controller:
    """``compress_`` on the modules the ``target`` config picks (the controller holds the model); a recipe's groups
    with their own ``vcon.*`` keys get their schedules here, over the run's ``vcon`` settings."""
    def own_schedule(group: str, keys: Any) -> Any:
        if keys is None or isinstance(keys, schedule.Schedule):
            return keys
        steps = {"steps": None} if "epochs" in keys else {}  # a group's Q in epochs replaces the run's Q in steps
        merged = dict(cfg.vcon) | steps | dict(keys)
        return schedule.from_config(merged, steps_per_epoch, total_steps, key=f"compression.groups.{group}.vcon")

    return compress_(net, compression.scheduled(own_schedule), schedule=beta_schedule,
                     filter_fn=targets.from_config(net, cfg.target), method=method)


def build_model(cfg: Any, compression: Compression, num_classes: int, device: torch.device,
                beta_schedule: schedule.Schedule, method: Method = VCON) -> tuple[Controller, Pipeline]:
    """``build_dense`` then ``compress_target``: what a run trains, for benchmarks and tests."""
    net, pipeline = build_dense(cfg, num_classes, device)
    return compress_target(cfg, net, compression, beta_schedule, method), pipeline


def teacher_for(cfg: Any, compression: Compression, net: nn.Module) -> Teacher | None:
    """The dense model as it is now (call it before ``compress_``) as teacher, where ``distill`` asks for one; never
    for a dense run, which would only learn from its own starting point."""
    settings = Distill(**cfg.distill)
    if compression.dense or not settings.on:
        return None
    return Teacher(net, settings)


def epoch_batches(split: data.Split, seed: int, epoch: int, images: int, batch_size: int, start: int = 0,
                  world: distributed.World = distributed.SINGLE) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Epoch ``epoch``'s whole batches of ``images`` examples of ``split``, from batch ``start`` on, this process's
    share of each: the order is a permutation seeded by the run's seed and the epoch, the same in every process and
    in a resumed run, and so is the per-example randomness of streamed crops."""
    seed = seed * 100_003 + epoch
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(len(split), generator=generator)[:images].to(split.labels.device)
    order = split.order(permutation, batch_size, generator)
    return split.batches(order[:images // batch_size * batch_size], batch_size, start, world, salt=seed)


class Training:
    """One run from its build to its results: data, model and controller, optimizer step, progress, tracking."""

    def __init__(self, cfg: Any, run_dir: Path, identity: dict[str, Any], compression: Compression, method: Method,
                 device: torch.device, world: distributed.World, state: dict[str, Any] | None,
                 start: dict[str, torch.Tensor] | None = None) -> None:
        self.cfg, self.t, self.run_dir, self.device, self.world = cfg, cfg.train, run_dir, device, world
        self.identity = identity  # what the run computes (vcon.app.identity), saved in every checkpoint
        # data: a seeded order per epoch over `epoch_images` of the training split
        checkpoint.seed_everything(cfg.seed + world.rank)
        self.dataset = data.load(cfg.data, cfg.model).to(device)  # on a GPU, batches are then gathered there: no copies
        self.epoch_images = min(self.t.epoch_size or len(self.dataset.train), len(self.dataset.train))
        self.steps_per_epoch = self.epoch_images // self.t.batch_size
        require(self.steps_per_epoch >= 1, "train.batch_size", self.t.batch_size,
                f"at most the {self.epoch_images} images an epoch")
        total_steps = self.t.epochs * self.steps_per_epoch
        beta_schedule = (schedule.ONE_SHOT if compression.dense else
                         schedule.from_config(cfg.vcon, self.steps_per_epoch, total_steps))
        # the model: its dense accuracy measured once, before compress_ (one-shot compresses at once), then compressed
        self.net, self.pipeline = build_dense(cfg, self.dataset.num_classes, device, start)
        # a model built from its config starts from each process's own seed: rank 0's weights everywhere, before the
        # dense evaluation (its counts are summed over the processes), the teacher's copy and compress_
        distributed.broadcast_(self.net, world)
        self.autocast = autocast_for(self.t, device)
        self.dense = (state.get("dense_test") or {"accuracy": state["dense_test_acc"]} if state  # older: accuracy
                      else self.evaluate(self.dataset.test))
        self.teacher = teacher_for(cfg, compression, self.net)  # frozen before compress_ moves the weights
        self.controller = compress_target(cfg, self.net, compression, beta_schedule, method, self.steps_per_epoch,
                                          total_steps)
        log.info("dense test %s; %s%s", self.describe(self.dense), "dense fine-tuning" if compression.dense else
                 f"compressing {len(self.controller.names)} modules: {compression.describe()}, {method.describe()}",
                 f", taught by the dense model: {self.teacher.settings.describe()}" if self.teacher else "")
        # the optimizer step, over the parameters trained from where the run stands
        self.progress = Progress(**state["progress"]) if state else Progress()
        if state:
            self.controller.load_state_dict(state["controller"])  # first: at β = 0 the originals are gone
        self.step = build_step(self.net, self.pipeline, self.t, self.steps_per_epoch, total_steps, device, world,
                               self.controller.beta,
                               capturable=method.capturable and model.input_kind(cfg.model).capturable,
                               teacher=self.teacher)
        if state:
            self.resume(state)
        self.resumed = state is not None

    def resume(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["model"])
        self.step.optimizer.load_state_dict(state["optimizer"])
        self.step.lr_schedule.load_state_dict(state["lr_schedule"])
        rng = state["rng"]
        checkpoint.set_rng_state(rng[self.world.rank] if len(rng) == self.world.size else rng[0])
        p = self.progress
        log.info("resumed %s at epoch %d, batch %d, step %d, beta %.4f", self.run_dir, p.epoch, p.batch, p.step,
                 self.controller.beta.value)

    def evaluate(self, split: data.Split) -> dict[str, float]:
        return evaluate(self.net, split, self.pipeline, self.t.eval_batch_size, self.autocast, self.dataset.metric,
                        self.world)

    @staticmethod
    def describe(values: dict[str, float]) -> str:
        return ", ".join(f"{metrics.LABELS[k]} {v:.2f} %" for k, v in values.items())

    def parallel(self) -> nn.Module:
        """What the step trains through: the model, or its DDP wrapper (rebuilt when the original branches are
        dropped: DDP fixes its parameter list)."""
        if self.world.size == 1:
            return self.net
        two_branches = any(isinstance(m, BlendedBranches) and m.original is not None for m in self.net.modules())
        return DistributedDataParallel(self.net, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                       find_unused_parameters=two_branches)  # β = 1 skips the compressed branch

    def save(self, finished: bool) -> None:
        rng = distributed.gather(checkpoint.rng_state(), self.world)
        if self.world.main:
            checkpoint.save({"identity": self.identity, "progress": dataclasses.asdict(self.progress),
                             "controller": self.controller.state_dict(), "model": self.net.state_dict(),
                             "optimizer": self.step.optimizer.state_dict(),
                             "lr_schedule": self.step.lr_schedule.state_dict(), "rng": rng,
                             "dense_test": self.dense, "finished": finished}, self.run_dir)
        distributed.barrier(self.world)

    def fit(self, tracker: Any, on_epoch_end: Callable[[int], None] | None = None) -> None:
        """Train epoch by epoch to the end; a stop signal saves a checkpoint and leaves (``StopRequest``).
        ``tracker``: where the main process logs (``vcon.app.tracking.Tracker``; None on the others)."""
        self.tracker = tracker
        try:
            self.step.wrapped = self.parallel()
            self.last_save = time.monotonic()
            with StopRequest() as stop:
                while self.progress.epoch < self.t.epochs:
                    self.train_epoch(stop)
                    self.end_epoch(stop)
                    if on_epoch_end is not None:
                        on_epoch_end(self.progress.epoch)
        except BaseException:  # a signal or an error: flush what was logged, so a resumed run continues it
            if self.tracker:
                self.tracker.finish(exit_code=1)
            raise

    def train_epoch(self, stop: StopRequest) -> None:
        """The epoch's optimizer steps (from mid-epoch after a resume), checkpointing when a signal or the clock
        says so. Losses stay on the device until they are read, every ``log_every`` steps."""
        t, p, world = self.t, self.progress, self.world
        mix_rng = torch.Generator().manual_seed(self.cfg.seed * 100_019 + p.epoch + 7919 * world.rank)
        if p.mix_rng is not None:
            mix_rng.set_state(p.mix_rng)
        self.epoch_start, self.epoch_first_batch = time.perf_counter(), p.batch
        bar = tqdm(total=self.steps_per_epoch, initial=p.batch, desc=f"epoch {p.epoch + 1}/{t.epochs}", unit="step",
                   leave=False, dynamic_ncols=True,
                   disable=not (world.main and sys.stderr.isatty()))  # SLURM logs get the epoch lines alone
        self.last_log, pending = time.perf_counter(), []
        batches = epoch_batches(self.dataset.train, self.cfg.seed, p.epoch, self.epoch_images, t.batch_size, p.batch,
                                world)
        while p.batch < self.steps_per_epoch:
            loss = self.step(*next(batches), mix_rng)
            p.step, p.batch = p.step + 1, p.batch + 1
            overdue = time.monotonic() - self.last_save > 60 * t.checkpoint_every_min
            stopping, overdue, loss = self._agree(stop, overdue, loss)  # from here on, what every process decides
            pending.append(loss)
            if self.controller.step(self.step.optimizer):  # β for the next step; at 0 the originals leave
                log.info("beta reached 0 at step %d: original branches dropped", p.step)
                self.step.wrapped = self.parallel()
            logging_step = p.step % t.log_every == 0
            if logging_step or stopping or overdue or p.batch == self.steps_per_epoch:
                loss_value = self._read_losses(pending)
            bar.update()
            if logging_step:
                self._log_step(bar, loss_value)
            if (stopping or overdue) and p.batch < self.steps_per_epoch:
                p.mix_rng = mix_rng.get_state()
                self.save(finished=False)
                self.last_save = time.monotonic()
                log.info("checkpoint at epoch %d, batch %d, step %d", p.epoch, p.batch, p.step)
                if stopping:
                    stop.hand_over()
        bar.close()

    def _agree(self, stop: StopRequest, overdue: bool = False,
               loss: torch.Tensor | None = None) -> tuple[bool, bool, torch.Tensor | None]:
        """With several processes, one collective: whether any process must stop, whether any process's clock says
        a checkpoint is overdue, and the mean ``loss`` (a step's; None at an epoch's end). Every process acts on
        these alone, never on its own flags: a signal caught, or a clock read, a moment apart would send one process
        into the checkpoint's gather while another went on to the next step's all-reduce, and both would hang."""
        if self.world.size == 1:
            return stop.requested, overdue, loss
        shared = torch.tensor([float(stop.requested), float(overdue), 0.0], dtype=torch.float64,
                              device=self.device)  # on the device: NCCL needs it there
        if loss is not None:
            shared[2] = loss
        torch.distributed.all_reduce(shared)
        stopping, overdue = shared[:2].tolist()
        if stopping and not stop.requested:  # another process was signalled: leave with it
            stop.signum = signal.SIGTERM
        return bool(stopping), bool(overdue), shared[2] / self.world.size

    def _read_losses(self, pending: list[torch.Tensor]) -> float:
        """The one wait for the device: the losses since the last read, added to the epoch's; returns the last."""
        losses = [float(v) for v in torch.stack(pending).cpu()]
        pending.clear()
        self.progress.loss_sum += sum(losses)
        if not all(map(math.isfinite, losses)):
            last = self.run_dir / checkpoint.FILENAME
            kept = f"the last checkpoint, {last}, is kept" if last.exists() else "no checkpoint was written yet"
            raise Diverged(f"the run diverged: loss is {losses[-1]} at step {self.progress.step} (epoch "
                           f"{self.progress.epoch + 1}; checked every train.log_every steps); {kept}. Try a lower "
                           f"train.lr (now {self.t.lr}) or train.grad_clip=1.0 (now {self.t.grad_clip})")
        return losses[-1]

    def _log_step(self, bar: tqdm, loss: float) -> None:
        now = time.perf_counter()
        speed = self.t.log_every * self.t.batch_size / (now - self.last_log)
        self.last_log = now
        bar.set_postfix(loss=f"{loss:.4f}", beta=f"{self.controller.beta.value:.3f}", img_s=f"{speed:.0f}")
        if self.tracker:
            self.tracker.log({"train/loss": loss, "train/lr": float(self.step.optimizer.param_groups[0]["lr"]),
                              "train/images_per_s": speed} | self.controller.scalars(), self.progress.step)

    def end_epoch(self, stop: StopRequest) -> None:
        """Evaluate, log and checkpoint the epoch just trained."""
        p, t = self.progress, self.t
        seconds = time.perf_counter() - self.epoch_start
        row = {"epoch": p.epoch + 1, "step": p.step, "beta": self.controller.beta.value,
               "loss": p.loss_sum / self.steps_per_epoch, "lr": float(self.step.optimizer.param_groups[0]["lr"]),
               "images_per_s": (self.steps_per_epoch - self.epoch_first_batch) * t.batch_size / seconds}
        row |= self.validate()
        p.history.append(row)
        p.epoch, p.batch, p.loss_sum, p.mix_rng = p.epoch + 1, 0, 0.0, None
        if self.tracker:
            figures = self.controller.figures()
            self.tracker.log({f"epoch/{k}": v for k, v in row.items() if k not in ("epoch", "step", "lr")}
                             | scalars_of(figures)
                             | {"epoch": p.epoch}, p.step)
        headline = "val_metric_compressed" if "val_metric_compressed" in row else "val_acc_compressed"
        blended = headline.replace("compressed", "blended")
        log.info("epoch %d/%d  step %d  beta %.3f  loss %.4f  val %s%.2f %% at beta=0  %.0f img/s", p.epoch, t.epochs,
                 p.step, row["beta"], row["loss"], f"{row[blended]:.2f} % blended, " if blended in row else "",
                 row[headline], row["images_per_s"])
        self.save(finished=p.epoch == t.epochs)
        self.last_save = time.monotonic()
        if p.epoch < t.epochs and self._agree(stop)[0]:
            stop.hand_over()

    def validate(self) -> dict[str, float]:
        """Validation accuracy of the β = 0 model, of the blended one during the transition, and how far apart
        original and compressed blocks are on a fixed probe batch."""
        beta = self.controller.beta
        with beta.fixed(0.0):
            values = keyed(self.evaluate(self.dataset.val), "val_acc_compressed", "val_metric_compressed")
        if 0 < beta.value < 1:
            values |= keyed(self.evaluate(self.dataset.val), "val_acc_blended", "val_metric_blended")
        probe = self.dataset.val.batch(slice(0, 64))
        self.net.eval()
        gap = block_gap(self.net, lambda: logits(self.net, self.pipeline.eval_batch(probe)))
        self.net.train()
        return values | ({"block_gap": gap} if gap is not None else {})

    def finish(self, started: float) -> dict[str, Any] | None:
        """The β = 0 test accuracy and the run's results (``results.json``, W&B summary; export when asked)."""
        with self.controller.beta.fixed(0.0):
            test = keyed(self.evaluate(self.dataset.test), "test_acc", "test_metric")
        if not self.world.main:
            return None
        figures = self.controller.figures()
        test |= keyed(self.dense, "dense_test_acc", "dense_test_metric")
        self.tracker.log({f"final/{k}": v for k, v in test.items() if not k.startswith("dense")}, self.progress.step)
        self.tracker.finish(test | scalars_of(figures))
        last = self.progress.history[-1]
        summary = {
            "metric": self.dataset.metric,  # the headline: test_metric where it is not accuracy (vcon/train/metrics.py)
            **test,
            "val_acc": last["val_acc_compressed"],
            **({"val_metric": last["val_metric_compressed"]} if "val_metric_compressed" in last else {}),
            "beta": self.controller.beta.value,
            "step": self.progress.step,
            "q_steps": None if self.controller.dense else self.controller.q_steps,
            "method": self.controller.method.name,
            "steps_per_epoch": self.steps_per_epoch,
            "processes": self.world.size,
            "compression": figures,
            "history": self.progress.history,
            "wall_time_s": time.perf_counter() - started,
            "device": str(self.device),
            # CUDA graphs captured by this process (train.cuda_graph): 0 where every step ran eagerly
            "cuda_graphs": self.step.captured.graphs_captured if self.step.captured else 0,
        }
        if self.cfg.save_pretrained:
            self.net.save_pretrained(self.run_dir / "pretrained")
            model.input_kind(self.cfg.model).save_with(self.run_dir / "pretrained", self.cfg.model)  # a tokenizer
        results.write(summary, self.run_dir)
        if self.cfg.get("export"):  # real compressed storage of the β = 0 model, its figures added to results.json
            from vcon import export
            out = self.run_dir / "export"
            summary["export"] = export.export_model(self.controller, out) | {"folder": str(out)}
            results.write(summary, self.run_dir)
        return summary
