"""The learning rate over the optimizer steps: linear warm-up, then a decay to ``min_lr``: cosine (the paper's
recipe for images) or linear (BERT's fine-tuning recipe, the Hugging Face Trainer's default)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

DECAYS: dict[str, Callable[[float], float]] = {  # progress in [0, 1] -> share of the way from the peak down
    "cosine": lambda progress: 0.5 * (1 - math.cos(math.pi * progress)),
    "linear": lambda progress: progress,
}


class Warmup:
    """LR factor per optimizer step: linear warm-up from ``start`` to the peak, then ``decay`` down to ``end``."""

    def __init__(self, warmup_steps: int, total_steps: int, start: float, end: float, decay: str = "cosine") -> None:
        # plain values only: torch's LambdaLR saves this object's attributes in its state_dict (checkpoints)
        self.warmup_steps, self.total_steps, self.start, self.end, self.decay = (warmup_steps, total_steps, start,
                                                                                 end, decay)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.start + (1 - self.start) * step / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return 1 - (1 - self.end) * DECAYS[self.decay](progress)


def from_config(optimizer: torch.optim.Optimizer, train: Any, steps_per_epoch: int,
                total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``train`` recipe's schedule (``lr``, ``warmup_epochs``, ``warmup_start_lr``, ``min_lr``, ``decay``) on
    ``optimizer``; torch's scheduler sets the lr in place, also when the lr is a device tensor (CUDA graphs)."""
    factor = Warmup(round(train.warmup_epochs * steps_per_epoch), total_steps, train.warmup_start_lr / train.lr,
                    train.min_lr / train.lr, train.get("decay", "cosine"))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
