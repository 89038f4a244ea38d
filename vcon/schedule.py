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
    """β over the optimizer steps: ``Schedule("linear", q_steps=384)`` is the paper's ``max(1 − t/Q, 0)``.
    ``params``: ``rate`` for ``exp``, ``stages`` for ``step``."""

    shape: str
    q_steps: int  # Q in optimizer steps; 0 is one-shot compression
    params: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        require(self.shape in SHAPES, "vcon.shape", self.shape, f"one of {sorted(SHAPES)}")
        require(isinstance(self.q_steps, int) and self.q_steps >= 0, "vcon.steps", self.q_steps, "an integer >= 0")
        allowed = _PARAMS.get(self.shape, ())
        require(set(self.params) <= set(allowed), f"the parameters of vcon.shape={self.shape}", sorted(self.params),
                f"a subset of {list(allowed)}")
        rate, stages = self.params.get("rate", 5.0), self.params.get("stages", 4)
        require(isinstance(rate, (int, float)) and rate > 0, "vcon.rate", rate, "a positive decay rate")
        require(isinstance(stages, int) and stages >= 1, "vcon.stages", stages, "an integer >= 1")

    def beta(self, step: int) -> float:
        if step >= self.q_steps:
            return 0.0
        return min(1.0, max(0.0, SHAPES[self.shape](step / self.q_steps, **self.params)))


ONE_SHOT = Schedule("linear", 0)  # compress at once, then fine-tune


def transition_length(cfg: Any) -> tuple[float, str]:
    """Q as the ``vcon`` settings give it: ``(vcon.steps, "steps")`` when set, else ``(vcon.epochs, "epochs")``."""
    if cfg.get("steps") is not None:
        return cfg["steps"], "steps"
    return cfg["epochs"], "epochs"


def from_config(cfg: Any, steps_per_epoch: int, total_steps: int, key: str = "vcon") -> Schedule:
    """Build the schedule from ``vcon`` settings (``key``: where they are, for messages; a recipe's group has its
    own). Q in epochs is converted to optimizer steps (``steps_per_epoch`` already counts gradient accumulation)."""
    shape = cfg["shape"]
    require(shape in SHAPES, f"{key}.shape", shape, f"one of {sorted(SHAPES)}")
    q, unit = transition_length(cfg)
    if unit == "steps":
        require(isinstance(q, int) and q >= 0, f"{key}.steps", q, "an integer >= 0")
        q_steps = q
    else:
        require(isinstance(q, (int, float)) and q >= 0, f"{key}.epochs", q,
                "a number of epochs >= 0 (0 is one-shot compression)")
        q_steps = round(q * steps_per_epoch)
        if q > 0 and q_steps == 0:  # a transition of no step is one-shot compression, whatever it is called
            raise ConfigError(f"{key}.epochs={q} is {q * steps_per_epoch:.3g} of the {steps_per_epoch} optimizer steps "
                              "an epoch, which rounds to no step; allowed: vcon.epochs=0 for one-shot compression, "
                              f"or at least {1 / steps_per_epoch:.3g} (one step) for VCON")
    if q_steps > total_steps:
        raise ConfigError(f"{key}.{unit}={q} is {q_steps} optimizer steps, longer than the run's {total_steps} "
                          f"({total_steps // max(steps_per_epoch, 1)} epochs of {steps_per_epoch}); "
                          "allowed: at most the run's length (raise train.epochs or lower Q)")
    params = {k: cfg[k] for k in _PARAMS.get(shape, ()) if cfg.get(k) is not None}
    return Schedule(shape, q_steps, params)
