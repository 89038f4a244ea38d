"""The β schedule: from 1 at step 0 to 0 at step Q, then 0 for the rest of training (``vcon.*`` settings)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from vcon.errors import ConfigError, require

# Each shape maps progress p = t/Q in [0, 1] to β, with β(0) = 1 and β(1) = 0.
SHAPES: dict[str, Callable[..., float]] = {
    "linear": lambda p: 1 - p,  # the paper's
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "cubic": lambda p: (1 - p) ** 3,
    "exp": lambda p, rate=5.0: (math.exp(-rate * p) - math.exp(-rate)) / (1 - math.exp(-rate)),
    "step": lambda p, stages=4: 1 - math.floor(stages * p) / stages,
}
_PARAMS = {"exp": ("rate",), "step": ("stages",)}


@dataclasses.dataclass(frozen=True)
class Schedule:
    shape: str
    q_steps: int  # Q in optimizer steps; 0 is one-shot compression
    params: dict = dataclasses.field(default_factory=dict)

    def beta(self, step: int) -> float:
        if step >= self.q_steps:
            return 0.0
        return min(1.0, max(0.0, SHAPES[self.shape](step / self.q_steps, **self.params)))


def from_config(cfg: Any, steps_per_epoch: int, total_steps: int) -> Schedule:
    """Build the schedule from ``vcon`` settings. Q is ``vcon.steps`` if set, else ``vcon.epochs`` converted to
    optimizer steps (``steps_per_epoch`` already counts gradient accumulation)."""
    require(cfg.shape in SHAPES, "vcon.shape", cfg.shape, f"one of {sorted(SHAPES)}")
    if cfg.get("steps") is not None:
        require(isinstance(cfg.steps, int) and cfg.steps >= 0, "vcon.steps", cfg.steps, "an integer >= 0")
        q_steps, asked = cfg.steps, f"vcon.steps={cfg.steps}"
    else:
        require(isinstance(cfg.epochs, (int, float)) and cfg.epochs >= 0, "vcon.epochs", cfg.epochs,
                "a number of epochs >= 0 (0 is one-shot compression)")
        q_steps, asked = round(cfg.epochs * steps_per_epoch), f"vcon.epochs={cfg.epochs}"
    if q_steps > total_steps:
        raise ConfigError(f"{asked} is {q_steps} optimizer steps, longer than the run's {total_steps} "
                          f"({total_steps // max(steps_per_epoch, 1)} epochs of {steps_per_epoch}); "
                          "allowed: at most the run's length (raise train.epochs or lower Q)")
    params = {k: cfg[k] for k in _PARAMS.get(cfg.shape, ()) if cfg.get(k) is not None}
    if cfg.shape == "exp":
        require(params.get("rate", 5.0) > 0, "vcon.rate", params.get("rate"), "a positive decay rate")
    if cfg.shape == "step":
        stages = params.get("stages", 4)
        require(isinstance(stages, int) and stages >= 1, "vcon.stages", stages, "an integer >= 1")
    return Schedule(cfg.shape, q_steps, params)
