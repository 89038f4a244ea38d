"""The library verb: ``compress_(model, compression, schedule=..., filter_fn=..., method=...)`` puts every chosen
block of any ``nn.Module`` beside its compressed form and returns the ``Controller`` that fades the originals out
(VCON), or that grows the compression in (``method=Gradual()``, the iterative baseline: ``vcon/method/gradual.py``).
A recipe gives each group of layers its own compression: ``compress_(model, {"*.attention.*": Quant(bits=1),
"*.mlp.*": LowRank(rank=16), "_default": None})``.

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

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from vcon.compression import Compression
from vcon.compression.none import NoCompression
from vcon.compression.recipe import Recipe, as_recipe, config_of, in_group
from vcon.core import figures, targets
from vcon.errors import ConfigError, ExportError
from vcon.method import VCON, Method
from vcon.method.blend import Beta, Betas, Precompute, drop_originals, finalize_, original_shape
from vcon.schedule import ONE_SHOT, Schedule

NONE = NoCompression()  # a recipe's dense group


@dataclasses.dataclass
class Part:
    """One group of compressed modules: what ``compress_`` was given (one compression is the group ``all``, a recipe
    has one per group) with its own β and schedule. A part whose compression is dense is left as it was."""

    name: str
    compression: Compression
    schedule: Schedule
    names: list[str]
    beta: Beta
    layers: list[nn.Module] = dataclasses.field(default_factory=list)  # the modules now standing for ``names``

    @property
    def moves(self) -> bool:
        return not self.compression.dense


class Controller:
    """Owns the β of each group and the optimizer-step count of one model compressed by ``compress_``.

    ``model``, ``compression``, ``method`` and ``names`` (the full names of the blended modules) are what
    ``compress_`` was given and chose; ``parts`` its groups (``Part``: one, ``all``, for one compression); ``beta``
    is the β the blended modules read (``float(controller.beta)``; a recipe's groups: ``Betas``, the largest; gradual
    compression applies strength ``1 − β``).
    """

    def __init__(self, model: nn.Module, compression: Compression | Recipe, schedule: Schedule, parts: list[Part],
                 method: Method = VCON) -> None:
        self.model, self.compression, self.schedule, self.parts = model, compression, schedule, parts
        self.method = method
        self.names = [name for part in parts if part.moves for name in part.names]
        moving = [part.beta for part in parts if part.moves] or [parts[0].beta]
        self.beta = moving[0] if len(moving) == 1 else Betas(moving)
        self.steps = 0
        self.finalized = False  # finalize() has baked the compression in: nothing is blended any more
        self._move(None)

    @property
    def dense(self) -> bool:
        """Nothing is compressed (``compression=none``): β stays at the original network."""
        return not self.names

    @property
    def q_steps(self) -> int:
        """The transition's length: the longest of the groups'."""
        return max((part.schedule.q_steps for part in self.parts if part.moves), default=0)

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Call after each optimizer step: sets β for the next one. When a group's β reaches 0, its original
        branches that are separate modules (low rank) leave the model and ``optimizer`` (parameters and state).
        Returns True when that changed the model's parameters (a ``DistributedDataParallel`` wrapper must then be
        rebuilt)."""
        self.steps += 1
        return self._move(optimizer)

    def _move(self, optimizer: torch.optim.Optimizer | None) -> bool:
        dropped = 0
        for part in self.parts:
            if not part.moves:
                continue
            part.beta.value = part.schedule.beta(self.steps)
            self.method.after_step(part.layers, self.steps, part.beta)
            if part.beta.value == 0:
                dropped += sum(drop_originals(layer, optimizer) for layer in part.layers)
        return dropped > 0

    def scalars(self) -> dict[str, float]:
        """Where the transition stands, for the logs: β (a recipe's: each group's too), and what the method adds
        (gradual: the strength and what it applies: fraction of zeros, fraction binarised, mean rank)."""
        out = {"vcon/beta": self.beta.value}
        for part in self.parts:
            if not part.moves:
                continue
            shapes = [original_shape(self.model.get_submodule(n)) for n in part.names]
            own = self.method.scalars(part.beta, part.compression, shapes)
            if len(self.parts) == 1:
                out |= own
            else:
                out |= {f"vcon/beta/{part.name}": part.beta.value} | {f"{k}/{part.name}": v for k, v in own.items()}
        return out

    @property
    def finished(self) -> bool:
        """Whether only the compressed model is left (β = 0 for good)."""
        return self.steps >= self.q_steps

    def state_dict(self) -> dict[str, Any]:
        state = {"step": self.steps, "beta": self.beta.value, "schedule": vars(self.schedule) | {},
                 "compression": config_of(self.compression), "method": self.method.name}
        if len(self.parts) > 1:  # a recipe: each group's schedule
            state["schedules"] = {part.name: vars(part.schedule) | {} for part in self.parts}
        return state

    def load_state_dict(self, state: dict[str, Any], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Go on from ``state``. Call it before loading the model's and the optimizer's own state: a checkpoint taken
        after β = 0 has no original branches, and they are dropped here first (also from ``optimizer``)."""
        mine = self.state_dict()
        missing = sorted({"step", "schedule", "compression"} - set(state))
        if missing:
            raise ValueError(f"this controller state lacks {missing}: it is not a Controller.state_dict() (its keys: "
                             f"{sorted(state)})")
        saved = {"method": VCON.name} | state  # states saved before methods were named are VCON's
        for key in ("schedule", "compression", "method", "schedules"):
            if saved.get(key) != mine.get(key):
                raise ValueError(f"this controller state was saved with {key} {saved.get(key)}, not {mine.get(key)}")
        self.steps = state["step"]
        self._move(optimizer)

    def go_to(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Put the controller at optimizer step ``step`` (e.g. the step of a checkpoint about to be loaded): β as the
        schedules have it there, the originals dropped (also from ``optimizer``) where it is 0. Returns what
        ``step`` does."""
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
        self.steps = max(self.steps, self.q_steps)
        for part in self.parts:
            if part.moves:
                part.beta.value = 0.0
                for layer in part.layers:
                    drop_originals(layer, optimizer)
        if self.names:
            finalize_(self.model, self.names)
            _refuse_save_pretrained_of_factors(self.model, self.names)
        for part in self.parts:  # the plain modules now in their place
            part.layers = [self.model.get_submodule(n) for n in part.names]
        self.finalized = True
        return self.model

    def compression_of(self, name: str) -> Compression:
        """The compression of the module ``name`` (its group's)."""
        return next(part.compression for part in self.parts if name in part.names)

    def figures(self) -> dict[str, Any]:
        """Storage figures of the compressed layers at β = 0 (parameters, bits per weight, zeros); a recipe's, each
        group's too (``groups``), a dense group's layers counted as they are."""
        return figures.figures(self.model, [(part.name, part.compression, part.names) for part in self.parts],
                               config_of(self.compression)["name"])

    def __repr__(self) -> str:
        return (f"Controller({self.compression.describe()}, {len(self.names)} modules, step {self.steps} of "
                f"Q = {self.q_steps}, β = {self.beta.value:.4f})")


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


def compress_(model: nn.Module, compression: Compression | Recipe | Mapping[str, Any], *,
              schedule: Schedule = ONE_SHOT, filter_fn: targets.FilterFn | None = None, method: Method = VCON
              ) -> Controller:
    """Blend every module that ``filter_fn(module, name)`` picks (default: every ``nn.Linear`` inside the model's
    repeated blocks, ``vcon.core.targets.in_blocks``) with its compressed form, in place, at β =
    ``schedule.beta(0)`` (1 for a transition, 0 for one-shot: the default schedule), as ``method`` blends (VCON, or
    ``Gradual()``). Returns the controller that moves β.

    ``compression``: one compression for every module, or a recipe: ``{pattern: compression}`` (``None``: leave
    dense; ``"_default"``: every module no pattern takes), or a ``vcon.Recipe`` of named groups, each with its own
    schedule if it likes. Which group takes a module: **the group that names it exactly, else the first matching
    pattern, else the default** (torchao's ``FqnToConfig`` order; patterns are shell patterns, ``re:`` regular
    expressions, ``{last}`` the last block's index)."""
    recipe, groups = plan(model, compression, filter_fn, method)
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else None
    parts = [Part(name, group, _schedule(own, schedule, name), names, Beta(device=device))
             for name, (group, names, own) in groups.items()]
    _place(model, parts, method, recipe)
    return Controller(model, recipe or compression, schedule, parts, method)


def plan(model: nn.Module, compression: Compression | Recipe | Mapping[str, Any],
         filter_fn: targets.FilterFn | None = None, method: Method = VCON
         ) -> tuple[Recipe | None, dict[str, tuple[Compression, list[str], Any]]]:
    """Everything ``compress_`` checks before it changes the model: the modules ``filter_fn`` picks, which group
    takes each (a recipe's precedence), that the method can drive the compression and that each group's compression
    fits the layers it takes (a rank above a layer's is refused, naming the group). Returns the recipe (None for one
    compression) and, per group, (compression, module names, its own schedule or None). Needs only the model's
    structure: ``vcon.app.job`` runs it on a skeleton on the meta device, before anything loads."""
    chosen = targets.matching(model, filter_fn or targets.in_blocks(model))
    recipe = as_recipe(compression)
    if recipe is None:
        groups = {"all": (compression, list(chosen), None)}
    else:
        taken = recipe.assign(list(chosen), _last(model))
        groups = {name: (part.compression or NONE, taken[name], part.schedule) for name, part in recipe.parts.items()}
    method.check(compression if recipe is None else recipe)
    for name, (group, names, _) in groups.items():
        _in_group(name, recipe, lambda: group.check({n: chosen[n] for n in names}))
    return recipe, groups


def _place(model: nn.Module, parts: list[Part], method: Method, recipe: Recipe | None) -> None:
    """Every part's modules wrapped by ``method``, all built before any goes in: a compression that refuses the
    method leaves the model as it was. One set of hooks per part: the weights of each group computed together."""
    built = {}
    for part in parts:
        if part.moves:
            for name in part.names:
                built[name] = _in_group(part.name, recipe,
                                        lambda: method.wrap(part.compression, model.get_submodule(name), part.beta))
    for name, module in built.items():
        model.set_submodule(name, module)
    for part in parts:
        part.layers = [model.get_submodule(n) for n in part.names]
        if part.moves:
            Precompute(model, part.layers, part.compression, part.beta, method.strength)


def _in_group(group: str, recipe: Recipe | None, build: Callable[[], Any]) -> Any:
    """``build()``; for a recipe, its refusals name the group (``vcon.compression.recipe.in_group``)."""
    return build() if recipe is None else in_group(group, build)


def _schedule(own: Any, default: Schedule, group: str) -> Schedule:
    """A group's schedule: its own (a ``Schedule``, or ``vcon.*`` keys with Q in steps), else ``default``."""
    if own is None or isinstance(own, Schedule):
        return own or default
    if own.get("epochs") is not None and own.get("steps") is None:
        raise ConfigError(f"compression.groups.{group}.vcon.epochs={own['epochs']} needs the run's steps per epoch: "
                          "give the library its Q in steps (vcon.steps), or resolve it with Recipe.scheduled")
    shape = own.get("shape", default.shape)
    params = {k: own[k] for k in ("rate", "stages") if own.get(k) is not None}
    return Schedule(shape, own.get("steps", default.q_steps), params)


def _last(model: nn.Module) -> int | None:
    """The index of the model's last block (a recipe's ``{last}``), None for a model without repeated blocks."""
    lists = targets.block_lists(model)
    return len(model.get_submodule(lists[0])) - 1 if lists else None
