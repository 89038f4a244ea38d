"""The sensitivity scan: how much the validation loss grows when only one group of layers is compressed, one-shot
and untrained, for every group and every candidate compression; then one candidate per group, the summed scores as
small as can be within a storage budget (``vcon.core.budget.allocate``, exact), as a recipe ``compress_`` and
``run.py`` take. The Hydra side (``vcon-scan``) is ``vcon.app.scan``; this is the library's part: torch only.

A group's score at a candidate is what ``compress_(copy, Recipe.of({<its layers>: candidate, "_default": None}))``
one-shot gives, measured cheaper: only the group's layers are copied, compressed and finalized (the plain β = 0
modules), put in the model's place for the loss, and the originals put back.

The gradient proxy estimates the same score without a forward pass per pair: the diagonal empirical Fisher
``½·Σ F·ΔW²``, ``ΔW = W − C(W)`` the change of each layer's effective weight (low rank: the factors' product), ``F``
each weight's mean squared gradient per example (from a few batches).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vcon.compression import Compression, Footprint
from vcon.compression.recipe import Group, Recipe
from vcon.core import budget, targets
from vcon.core.controller import compress_
from vcon.errors import ConfigError
from vcon.method.blend import original_shape

log = logging.getLogger(__name__)

PER = ("block-part", "block", "layer")  # how the target's layers are grouped
UNITS = {"bits_per_weight": "bits", "params": "values"}  # a budget's key: what its costs count
Loss = Callable[[nn.Module], float]  # the model's mean validation loss over the scanned examples


def groups_of(model: nn.Module, names: Iterable[str], per: str) -> dict[str, list[str]]:
    """The target's module ``names`` grouped ``per`` block and its first name part after the block's index
    (``block0-attention``: ``vit.layers.0.attention.*``), ``per`` block (``block0``) or each ``layer``
    (``block0-attention-q_proj``). A module outside the blocks is a group of its own. Names are readable and keep no
    dots (a dot would split the key of a command-line override)."""
    if per not in PER:
        raise ConfigError(f"scan.per={per!r} is not allowed: expected one of {', '.join(PER)}")
    lists = targets.block_lists(model)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(_group_name(name, lists, per), []).append(name)
    return groups


def _group_name(name: str, lists: list[str], per: str) -> str:
    for prefix in lists:
        inside = f"{prefix}." if prefix else ""
        if name.startswith(inside):
            index, _, rest = name[len(inside):].partition(".")
            block = f"block{index}" if len(lists) == 1 else f"{prefix.replace('.', '-')}-{index}"
            if per == "block" or not rest:
                return block
            return f"{block}-{rest.split('.')[0] if per == 'block-part' else rest.replace('.', '-')}"
    return name.replace(".", "-")


def costs_of(model: nn.Module, groups: Mapping[str, list[str]], candidates: Mapping[str, Compression],
             key: str) -> dict[str, dict[str, int]]:
    """What each group costs at each candidate, in the budget ``key``'s unit (bits, or stored values): from each
    compression's own ``Footprint``, as a run's figures count them (``vcon.core.figures``). Nothing is compressed,
    and shapes are all it reads: ``model`` may be a skeleton on the meta device."""
    def cost(compression: Compression, names: list[str]) -> int:
        total = 0
        for name in names:
            shape = original_shape(model.get_submodule(name))
            fp = compression.footprint(Footprint(shape.numel(), 32), shape)
            total += fp.bits if UNITS[key] == "bits" else fp.values
        return total

    return {group: {label: cost(c, names) for label, c in candidates.items()} for group, names in groups.items()}


def weights_of(model: nn.Module, names: Iterable[str]) -> int:
    """How many original weights the modules ``names`` hold: what bits a weight are counted over."""
    return sum(original_shape(model.get_submodule(name)).numel() for name in names)


@dataclasses.dataclass(frozen=True)
class Budget:
    """``bits_per_weight`` over the target's layers (dense ones count 32), or ``params`` stored values."""

    key: str
    value: float

    def total(self, weights: int) -> float:
        """The budget in its costs' unit, for ``weights`` original weights."""
        return self.value * weights if self.key == "bits_per_weight" else self.value

    def spoken(self, cost: float, weights: int) -> str:
        return f"{cost / weights:.4g} bits a weight" if self.key == "bits_per_weight" else f"{cost:.0f} parameters"

    def check(self, costs: Mapping[str, Mapping[str, float]], weights: int) -> None:
        """Refused, before anything is scored: a budget below the cheapest allocation, or one the dearest fits (it
        leaves nothing to trade: every group would take its best candidate, whatever it costs)."""
        cheapest = sum(min(c.values()) for c in costs.values())
        dearest = sum(max(c.values()) for c in costs.values())
        setting = f"scan.budget.{self.key}={self.value:g}"
        if self.total(weights) < cheapest:
            raise ConfigError(f"{setting} is not allowed: no allocation fits it; the cheapest (every group at its "
                              f"cheapest candidate) costs {self.spoken(cheapest, weights)}")
        if self.total(weights) >= dearest:
            raise ConfigError(f"{setting} is not allowed: every allocation fits it, the dearest costs "
                              f"{self.spoken(dearest, weights)}, so it chooses nothing; allowed: from "
                              f"{self.spoken(cheapest, weights)} to below that")


def compressed(model: nn.Module, names: list[str], compression: Compression) -> dict[str, nn.Module]:
    """The plain β = 0 modules ``compress_`` one-shot makes of ``model``'s modules ``names`` (finalized), built on
    copies: ``model`` is left as it was."""
    holder = nn.ModuleList(copy.deepcopy(model.get_submodule(name)) for name in names)
    compress_(holder, compression, filter_fn=lambda module, name: name.isdigit()).finalize()
    return dict(zip(names, holder))


@contextlib.contextmanager
def swapped(model: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[nn.Module]:
    """``model`` with ``modules`` in place of its own of the same names, which are put back afterwards."""
    originals = {name: model.get_submodule(name) for name in modules}
    try:
        for name, module in modules.items():
            model.set_submodule(name, module)
        yield model
    finally:
        for name, module in originals.items():
            model.set_submodule(name, module)


def check_candidates(model: nn.Module, names: list[str], candidates: Mapping[str, Compression]) -> None:
    """Each candidate against every layer it may get (a rank above a layer's is refused here, naming the candidate),
    before any forward pass."""
    layers = {name: model.get_submodule(name) for name in names}
    for label, candidate in candidates.items():
        try:
            candidate.check(layers)
        except ConfigError as e:
            raise ConfigError(f"scan candidate {label!r}: {e}") from None


@dataclasses.dataclass
class Scores:
    """Δloss of each (group, candidate) over the dense model's ``dense_loss``; ``proxy``: the gradient proxy's
    estimate of the same (empty without it); how many loss evaluations and seconds each took."""

    dense_loss: float
    exact: dict[str, dict[str, float]]
    proxy: dict[str, dict[str, float]]
    evaluations: int
    seconds: float
    proxy_seconds: float = 0.0
    dense: tuple[str, ...] = ()  # the dense candidates: 0 everywhere, unmeasured


def score(model: nn.Module, groups: Mapping[str, list[str]], candidates: Mapping[str, Compression], loss: Loss,
          fisher: Mapping[str, torch.Tensor] | None = None, progress: bool = True) -> Scores:
    """Each group compressed alone at each candidate: the loss's growth over the dense model's (a dense candidate
    scores 0, unmeasured), and with ``fisher`` (``fisher_of``) the proxy's estimate beside it."""
    started = time.perf_counter()
    dense = loss(model)
    exact: dict[str, dict[str, float]] = {}
    proxy: dict[str, dict[str, float]] = {}
    evaluations, proxy_seconds = 1, 0.0
    bar = tqdm(total=len(groups) * len(candidates), desc="scan", unit="pair", disable=not progress, leave=False)
    for group, names in groups.items():
        exact[group], proxy[group] = {}, {}
        for label, candidate in candidates.items():
            bar.update()
            if candidate.dense:
                exact[group][label] = proxy[group][label] = 0.0
                continue
            modules = compressed(model, names, candidate)
            if fisher is not None:
                clock = time.perf_counter()
                proxy[group][label] = _fisher_estimate(model, modules, fisher)
                proxy_seconds += time.perf_counter() - clock
            with swapped(model, modules):
                exact[group][label] = loss(model) - dense
            evaluations += 1
        measured = {label: value for label, value in exact[group].items() if not candidates[label].dense}
        log.info("scanned %s (%d layers): Δloss %s; least of the compressions: %s", group, len(names),
                 ", ".join(f"{label} {value:+.4f}" for label, value in exact[group].items()),
                 min(measured, key=measured.get, default="none"))
    bar.close()
    return Scores(dense, exact, proxy if fisher is not None else {}, evaluations, time.perf_counter() - started,
                  proxy_seconds, tuple(label for label, c in candidates.items() if c.dense))


def fisher_of(model: nn.Module, names: list[str], batch_losses: Iterable[Callable[[nn.Module], torch.Tensor]],
              examples_per_batch: int) -> dict[str, torch.Tensor]:
    """Each layer's diagonal empirical Fisher: the mean squared gradient of its weight over the batches' mean losses,
    times the examples a batch (a batch mean's squared gradient is about 1/B of an example's, near a minimum)."""
    weights = {name: model.get_submodule(name).weight for name in names}
    sums = {name: torch.zeros_like(w) for name, w in weights.items()}
    count = 0
    for batch_loss in batch_losses:
        grads = torch.autograd.grad(batch_loss(model), list(weights.values()))
        for name, g in zip(weights, grads):
            sums[name] += g.detach().float() ** 2
        count += 1
    return {name: s * examples_per_batch / max(count, 1) for name, s in sums.items()}


@torch.no_grad()
def effective_weight(module: nn.Module, in_features: int, like: torch.Tensor) -> torch.Tensor:
    """The (out × in) matrix a linear module computes, whatever its structure: its outputs for the identity's rows,
    less its output for zero (the bias)."""
    eye = torch.eye(in_features, dtype=like.dtype, device=like.device)
    return (module(eye) - module(torch.zeros_like(eye[:1]))).T


def _fisher_estimate(model: nn.Module, modules: Mapping[str, nn.Module], fisher: Mapping[str, torch.Tensor]) -> float:
    total = 0.0
    for name, module in modules.items():
        weight = model.get_submodule(name).weight
        delta = weight.detach().float() - effective_weight(module, weight.shape[1], weight).float()
        total += 0.5 * float((fisher[name] * delta**2).sum())
    return total


def recipe_of(groups: Mapping[str, list[str]], candidates: Mapping[str, Compression],
              chosen: Mapping[str, str]) -> Recipe:
    """The chosen allocation as a recipe: a group per scanned group, its modules by their full names (exact names,
    which no other group's pattern can take), a dense candidate left dense."""
    parts = {}
    for group, names in groups.items():
        candidate = candidates[chosen[group]]
        parts[group] = Group(tuple(names), None if candidate.dense else candidate)
    return Recipe(parts)


def summed(scores: Mapping[str, Mapping[str, float]], chosen: Mapping[str, str]) -> float:
    return sum(scores[group][label] for group, label in chosen.items())


def solve(scores: Scores, costs: Mapping[str, Mapping[str, float]], plan: Budget, weights: int) -> dict[str, Any]:
    """The exact allocation under the budget (and the proxy's, where there is one): the chosen candidates, their
    cost and summed measured Δloss, and how well the proxy ranks the compressed pairs (Spearman)."""
    total = plan.total(weights)
    chosen = budget.allocate(scores.exact, costs, total)
    out = {"chosen": chosen, "cost": sum(costs[g][c] for g, c in chosen.items()),
           "summed_delta_loss": summed(scores.exact, chosen)}
    if scores.proxy:
        from scipy.stats import spearmanr

        by_proxy = budget.allocate(scores.proxy, costs, total)
        pairs = [(scores.exact[g][c], scores.proxy[g][c]) for g in scores.exact for c in scores.exact[g]
                 if c not in scores.dense]  # a dense candidate is 0 in both, unmeasured
        out["proxy"] = {"spearman": float(spearmanr(*zip(*pairs)).statistic), "pairs": len(pairs),
                        "chosen": by_proxy, "summed_delta_loss": summed(scores.exact, by_proxy)}
    return out
