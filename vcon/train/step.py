"""One optimizer step of a run, on the training device, and how the ``train`` recipe sets it up: AdamW, the LR
schedule, bf16 autocast, ``torch.compile`` of the blocks, CUDA graphs. ``vcon/train/loop.py`` trains through ``Step``,
and ``bench/train_speed.py`` times it, so the benchmark measures the code that trains."""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vcon.core import targets
from vcon.data.augment import Pipeline
from vcon.distill import Teacher
from vcon.method.blend import Beta
from vcon.train import distributed, lr_schedule
from vcon.train.cuda_graph import CapturedStep

log = logging.getLogger(__name__)


def logits(net: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's logits for a pipeline's batch (its keyword arguments: ``pixel_values``, or ``input_ids``...)."""
    return net(**inputs).logits


def task_loss(net: nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """The task's cross entropy (``targets``: class indices, or MixUp's soft targets); ``Teacher.loss`` is the other
    loss a step takes."""
    return F.cross_entropy(logits(net, inputs).float(), targets)


class Step:
    """One optimizer step on a batch (uint8 images, or token ids): its preparation on the device (augmentation), forward and backward (under
    ``autocast``), gradient clipping, AdamW, the LR schedule. ``run`` trains through it and ``bench/train_speed.py``
    times it, so the benchmark measures the code that trains.

    It returns the loss as a device tensor and never waits for the device: the host queues the next step while the
    device still computes this one. Reading the loss (``float``) is the caller's choice, every ``log_every`` steps.
    With ``captured`` (a ``CapturedStep`` around ``train_on``: ``train.cuda_graph``) the step replays a CUDA graph.
    ``loss(net, inputs, targets)``: the task's alone, or a teacher's (``vcon.distill.Teacher.loss``).
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: Any, pipeline: Pipeline,
                 autocast: Callable, train: Any, world: distributed.World = distributed.SINGLE,
                 graph_key: Callable[[], Any] | None = None, loss: Callable[..., torch.Tensor] = task_loss) -> None:
        self.net, self.optimizer, self.lr_schedule, self.loss = net, optimizer, lr_schedule, loss
        self.wrapped = net  # what forward and backward run through: ``net``, or its DistributedDataParallel wrapper
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
            with contextlib.nullcontext() if sync else self.wrapped.no_sync(), self.autocast():
                loss = self.loss(self.wrapped, x, y) / len(batches)
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
    forward, all layers at once: ``vcon.method.blend``). Returns the number of blocks."""
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


def build_step(net: nn.Module, pipeline: Pipeline, train: Any, steps_per_epoch: int, total_steps: int,
               device: torch.device, world: distributed.World = distributed.SINGLE, beta: Beta | None = None,
               capturable: bool = True, teacher: Teacher | None = None) -> Step:
    """AdamW (fused on CUDA) with warm-up and cosine decay over the parameters ``net`` trains now (after any
    ``drop_originals``), the blocks compiled where ``train.compile`` says, and the ``Step`` that uses them, captured
    as a CUDA graph where ``train.cuda_graph`` says (then the lr is a device tensor and the optimizer capturable, and
    the graph is captured again whenever ``beta``'s phase or the trained parameters change). ``capturable=False``:
    the step's shapes change between steps (gradual compression), so it is never captured. ``teacher``: the dense
    model teaching (``distill``), its forward in the same step, compiled alike."""
    captured = capturable and captures(train, device, world)
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad],
                                  lr=torch.tensor(train.lr, device=device) if captured else train.lr,
                                  weight_decay=train.weight_decay, fused=device.type == "cuda" or captured,
                                  capturable=captured)  # fused: capturable on any device, so tests build it on CPUs
    schedule = lr_schedule.from_config(optimizer, train, steps_per_epoch, total_steps)
    if compiles(train, device):
        log.info("compiled %d blocks with torch.compile", compile_blocks(net) + (compile_blocks(teacher.model)
                                                                               if teacher else 0))

    def graph_key() -> tuple:  # what a captured step's kernels depend on: β's phase, the parameters trained
        return beta.phase if beta else None, sum(len(g["params"]) for g in optimizer.param_groups)

    if captured:
        optimizer.register_load_state_dict_post_hook(_lr_as_device_tensor)
        log.info("each training step replays a CUDA graph (train.cuda_graph=%s)", train.cuda_graph)
    return Step(net, optimizer, schedule, pipeline, autocast_for(train, device), train, world,
                graph_key if captured else None, teacher.loss if teacher else task_loss)
