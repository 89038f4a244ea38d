"""The library verb: ``compress_(model, compression, schedule=..., filter_fn=..., method=...)`` puts every chosen
block of any ``nn.Module`` beside its compressed form and returns the ``Controller`` that fades the originals out
(VCON), or that grows the compression in (``method=Gradual()``, the iterative baseline: ``vcon/method/__init__.py``).

Any training loop drives VCON with one call after each optimizer step::

    controller = vcon.compress_(model, vcon.Prune(ratio=0.9), schedule=vcon.Schedule("linear", q_steps=384))
    optimizer = torch.optim.AdamW(model.parameters())
    for x, y in batches:
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        controller.step(optimizer)     # β for the next step; at β = 0 the originals leave model and optimizer

``vcon.train.loop`` (``run.py``), ``vcon.export`` and the Hugging Face ``Trainer`` callback (``vcon.hf``) drive it in
exactly this way: there is one way to drive VCON.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vcon.compression import Compression, to_config
from vcon.core import figures, targets
from vcon.errors import ExportError
from vcon.method import VCON, Gradual, Method
from vcon.method.blend import Beta, GradualBranches, blend_, drop_originals, finalize_, original_shape
from vcon.schedule import ONE_SHOT, Schedule


class Controller:
    """Owns β and the optimizer-step count of one model compressed by ``compress_``.

    ``model``, ``compression``, ``method`` and ``names`` (the full names of the blended modules) are what
    ``compress_`` was given and chose; ``beta`` is the β every blended module reads (``float(controller.beta)``;
    gradual compression applies strength ``1 − β``).
    """

    def __init__(self, model: nn.Module, compression: Compression, schedule: Schedule, names: list[str],
                 beta: Beta, method: Method = VCON) -> None:
        self.model, self.compression, self.schedule, self.names, self.beta = model, compression, schedule, names, beta
        self.method = method
        self.steps = 0
        self.finalized = False  # finalize() has baked the compression in: nothing is blended any more
        self._move(None)

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call after each optimizer step: sets β for the next one. When β reaches 0, the original branches that
        are separate modules (low rank) leave the model and ``optimizer`` (parameters and state). Returns True when
        that changed the model's parameters (a ``DistributedDataParallel`` wrapper must then be rebuilt)."""
        self.steps += 1
        return self._move(optimizer)

    def _move(self, optimizer: torch.optim.Optimizer | None) -> bool:
        if self.compression.dense:  # nothing is blended: β stays at the original network
            return False
        self.beta.value = self.schedule.beta(self.steps)
        if isinstance(self.method, Gradual) and self.beta.value > 0 and self.steps % self.method.svd_every == 0:
            for module in self.model.modules():  # gradual low rank: a new SVD of each layer's current weight
                if isinstance(module, GradualBranches) and module.original is not None:
                    module.refresh()
        return self.beta.value == 0 and drop_originals(self.model, optimizer) > 0

    def scalars(self) -> dict[str, float]:
        """Where the transition stands, for the logs: β, and for gradual compression the strength and what it
        applies (fraction of zeros, fraction binarised, mean rank)."""
        beta = self.beta.value
        if not isinstance(self.method, Gradual) or self.compression.dense:
            return {"vcon/beta": beta}
        shapes = [original_shape(self.model.get_submodule(n)) for n in self.names]
        figures = self.compression.ramp_figures(1 - beta, shapes)
        return {"vcon/beta": beta, "gradual/strength": 1 - beta} | {f"gradual/{k}": v for k, v in figures.items()}

    @property
    def finished(self) -> bool:
        """Whether only the compressed model is left (β = 0 for good)."""
        return self.compression.dense or self.steps >= self.schedule.q_steps

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.steps, "beta": self.beta.value, "schedule": vars(self.schedule) | {},
                "compression": to_config(self.compression), "method": self.method.name}

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Go on from ``state``. Call it before loading the model's and the optimizer's own state: a checkpoint taken
        after β = 0 has no original branches, and they are dropped here first (also from ``optimizer``)."""
        mine = self.state_dict()
        missing = sorted({"step", "schedule", "compression"} - set(state))
        if missing:
            raise ValueError(f"this controller state lacks {missing}: it is not a Controller.state_dict() (its keys: "
                             f"{sorted(state)})")
        saved = {"method": VCON.name} | state  # states saved before methods were named are VCON's
        for key in ("schedule", "compression", "method"):
            if saved[key] != mine[key]:
                raise ValueError(f"this controller state was saved with {key} {saved[key]}, not {mine[key]}")
        self.steps = state["step"]
        self._move(optimizer)

    def go_to(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Put the controller at optimizer step ``step`` (e.g. the step of a checkpoint about to be loaded): β as the
        schedule has it there, the originals dropped (also from ``optimizer``) if it is 0. Returns what ``step``
        does."""
        self.steps = step
        return self._move(optimizer)

    def finalize(self, optimizer: torch.optim.Optimizer | None = None) -> nn.Module:
        """End the transition now and bake the compression in: β = 0, the originals dropped (also from
        ``optimizer``), and every blended module replaced by the plain module it computes at β = 0. Returns the
        model, for inference, ``vcon.export`` or, for weight compressions, ``save_pretrained``:

        * prune, quant and their chains: an ``nn.Linear`` whose weight is the compressed one, ``C(W)`` (zeros,
          ±scale), so ``save_pretrained`` / ``Trainer.save_model`` write it and the model's own transformers class
          loads it back (``from_pretrained``), as a dense matrix; ``vcon.export`` stores it compressed.
        * low rank: ``vcon.compression.lrd.LowRankLinear``, two ``nn.Linear``: ``down`` (A, rank × in) and ``up``
          (B, out × rank, and the bias). A transformers class holds one matrix per layer and would re-initialise
          these, so the model's ``save_pretrained`` refuses, naming ``vcon.export``: ``export_model(controller,
          folder)`` writes it and ``vcon.export.load(folder)`` rebuilds it.

        The end of the controller's work: the layers train on as plain layers, without their compression, and
        ``VconCallback`` refuses a finalized controller. (To resume a checkpoint taken after β = 0, ``go_to`` its
        step instead.)"""
        self.steps = max(self.steps, self.schedule.q_steps)
        if not self.compression.dense:
            self.beta.value = 0.0
            drop_originals(self.model, optimizer)
            finalize_(self.model, self.names)
            _refuse_save_pretrained_of_factors(self.model, self.names)
        self.finalized = True
        return self.model

    def figures(self) -> dict[str, Any]:
        """Storage figures of the compressed layers at β = 0 (parameters, bits per weight, zeros)."""
        return figures.figures(self.model, self.compression, self.names)

    def __repr__(self) -> str:
        return (f"Controller({self.compression.describe()}, {len(self.names)} modules, step {self.steps} of "
                f"Q = {self.schedule.q_steps}, β = {self.beta.value:.4f})")


def _refuse_save_pretrained_of_factors(model: nn.Module, names: list[str]) -> None:
    """A finalized layer that is not an ``nn.Linear`` (low rank's factors) has keys the model's transformers class
    does not know: its ``from_pretrained`` would re-initialise the layer with a warning. transformers has no hook
    that refuses a save, so this model's ``save_pretrained`` (which ``Trainer.save_model`` and ``push_to_hub``
    call) is shadowed by one that says what to do instead."""
    factored = [name for name in names if not isinstance(model.get_submodule(name), nn.Linear)]
    if not factored or not hasattr(model, "save_pretrained"):
        return

    cls, kind = type(model).__name__, type(model.get_submodule(factored[0])).__name__
    message = (f"{cls}.save_pretrained cannot save this finalized model: {len(factored)} of its layers (e.g. "
               f"{factored[0]}) are {kind}, which {cls}.from_pretrained would re-initialise; write it with "
               "vcon.export.export_model(controller, folder) and read it back with vcon.export.load(folder)")

    def save_pretrained(*args: Any, **kwargs: Any) -> None:
        raise ExportError(message)

    model.save_pretrained = save_pretrained


def compress_(model: nn.Module, compression: Compression, *, schedule: Schedule = ONE_SHOT,
              filter_fn: targets.FilterFn | None = None, method: Method = VCON) -> Controller:
    """Blend every module that ``filter_fn(module, name)`` picks (default: every ``nn.Linear`` inside the model's
    repeated blocks, ``vcon.core.targets.in_blocks``) with its ``compression``, in place, at β = ``schedule.beta(0)``
    (1 for a transition, 0 for one-shot: the default schedule), as ``method`` blends (VCON, or ``Gradual()``).
    Returns the controller that moves β."""
    chosen = targets.matching(model, filter_fn or targets.in_blocks(model))
    compression.check(chosen)
    beta = blend_(model, compression, list(chosen), method=method)
    return Controller(model, compression, schedule, list(chosen), beta, method)
