"""The learning rate over the optimizer steps: linear warm-up, then cosine decay (the paper's recipe)."""
from __future__ import annotations

import math
from typing import Any

import torch


class WarmupCosine:
    """LR factor per optimizer step: linear warm-up from ``start`` to the peak, then cosine down to ``end``."""

    def __init__(self, warmup_steps: int, total_steps: int, start: float, end: float) -> None:
        self.warmup_steps, self.total_steps, self.start, self.end = warmup_steps, total_steps, start, end

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1 - self.start) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.end + (1 - self.end) * 0.5 * (1 + math.cos(math.pi * progress))


def from_config(optimizer: torch.optim.Optimizer, train: Any, steps_per_epoch: int,
                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``train`` recipe's schedule (``lr``, ``warmup_epochs``, ``warmup_start_lr``, ``min_lr``) on
    ``optimizer``; torch's scheduler sets the lr in place, also when the lr is a device tensor (CUDA graphs)."""
    factor = WarmupCosine(round(train.warmup_epochs * steps_per_epoch), total_steps,
                          train.warmup_start_lr / train.lr, train.min_lr / train.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
