"""``vcon-scan [group=option ...] [key=value ...]``: the sensitivity scan over the same conf/ as run.py, and the
recipe it chooses under a budget (docs/budgets.md; the library's part is ``vcon.core.scan``)::

    vcon-scan model=vit-micro data=fashion-mnist scan.budget.bits_per_weight=1.8
    python run.py --config-dir <scan.out> compression=<scan.name>

Every setting is checked before anything loads, and the budget against the cheapest and the dearest allocation
before the first forward pass. Writes into ``scan.out``: scores.json, heatmap.png, scan.md and the recipe,
compression/<scan.name>.yaml; a folder that holds an earlier scan is refused, not overwritten."""
from __future__ import annotations

import copy
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from matplotlib.colors import SymLogNorm
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vcon import data, model
from vcon.app import config, job
from vcon.atomic import write_atomic
from vcon.compression import Compression, from_config
from vcon.compression.recipe import Recipe, config_of
from vcon.core import scan as core
from vcon.core import targets
from vcon.core.controller import compress_
from vcon.errors import ConfigError, VconError, say
from vcon.shipped import CONF
from vcon.train.loop import build_dense
from vcon.train.step import autocast_for, logits

log = logging.getLogger("vcon.scan")
# The primary config: run.py's, with the scan's folder as Hydra's (its own log lands there; no .hydra/ in it, so
# that `--config-dir <scan.out>` finds nothing but the recipe)
PRIMARY = "vcon_scan"
ConfigStore.instance().store(name=PRIMARY, node={"defaults": ["config", "_self_"],
                                                 "hydra": {"run": {"dir": "${scan.out}"}, "output_subdir": None}})


def check(cfg: Any) -> tuple[dict[str, Compression], core.Budget]:
    """Every setting, before anything is loaded: the run's config as run.py checks it, each candidate built (its
    label is its description, once each), and the budget, exactly one of its keys."""
    job.check(cfg)
    candidates: dict[str, Compression] = {}
    for i, spec in enumerate(OmegaConf.to_container(cfg.scan.candidates, resolve=True)):
        try:
            candidate = from_config(spec)
        except ConfigError as e:
            raise ConfigError(str(e).replace("compression.", f"scan.candidates.{i}.")
                              .replace("compression=", f"scan.candidates.{i}=")) from None
        if isinstance(candidate, Recipe):
            raise ConfigError(f"scan.candidates.{i}.name=recipe is not allowed: a candidate is one compression "
                              "(a chain for several); the recipe is what the scan writes")
        label = candidate.describe()
        if label in candidates:
            raise ConfigError(f"scan.candidates.{i}={spec} is not allowed: it repeats candidate {label!r}")
        candidates[label] = candidate
    given = {k: v for k, v in cfg.scan.budget.items() if v is not None}
    if len(given) != 1:
        raise ConfigError(f"scan.budget={given or 'nothing'} is not allowed: expected exactly one of "
                          "scan.budget.bits_per_weight=... or scan.budget.params=...")
    ((key, value),) = given.items()
    s = cfg.scan
    if s.proxy and s.proxy_batch_size > s.examples:  # not one whole gradient batch
        raise ConfigError(f"scan.proxy_batch_size={s.proxy_batch_size} is not allowed: expected at most "
                          f"scan.examples={s.examples} (or scan.proxy=false)")
    return candidates, core.Budget(key, value)


def val_loss(split: data.Split, pipeline: Any, examples: int, batch_size: int, autocast: Any) -> tuple[core.Loss, int]:
    """The mean cross entropy over the first ``examples`` of ``split``, through the pipeline's ``eval_batch`` as
    ``vcon.train.loop.evaluate`` runs it (the batches prepared once); and how many forward passes it takes."""
    index = torch.arange(min(examples, len(split)))
    batches = [(pipeline.eval_batch(x), y) for x, y in split.batches(index, batch_size, last=True)]

    @torch.no_grad()
    def loss(net: nn.Module) -> float:
        was_training = net.training
        net.eval()
        total = 0.0
        for inputs, labels in batches:
            with autocast(), torch.compiler.set_stance("force_eager"):
                out = logits(net, inputs)
            total += float(F.cross_entropy(out.float(), labels, reduction="sum"))
        net.train(was_training)
        return total / len(index)

    return loss, len(batches)


def batch_losses(split: data.Split, pipeline: Any, examples: int, batch_size: int, autocast: Any) -> list:
    """The proxy's gradient batches: the same examples, in whole batches of ``batch_size``, each a mean loss."""
    index = torch.arange(min(examples, len(split)))

    def batch_loss(inputs: dict, labels: torch.Tensor):
        def loss(net: nn.Module) -> torch.Tensor:
            net.eval()  # no dropout: the gradient of the loss the scores measure
            with autocast():
                return F.cross_entropy(logits(net, inputs).float(), labels)
        return loss

    return [batch_loss(pipeline.eval_batch(x), y) for x, y in split.batches(index, batch_size)]


def joint_loss(net: nn.Module, cfg: Any, recipe: Recipe, loss: core.Loss) -> tuple[float, dict[str, Any]]:
    """A copy of ``net`` compressed by the whole recipe, one-shot, as a run at β = 0: its loss and figures."""
    copied = copy.deepcopy(net)
    controller = compress_(copied, recipe, filter_fn=targets.from_config(copied, cfg.target))
    return loss(copied), controller.figures()


def layout(net: nn.Module, cfg: Any, candidates: dict[str, Compression], plan: core.Budget
           ) -> tuple[list[str], dict[str, list[str]], dict[str, dict[str, int]], int]:
    """The target's module names, their groups, each group's cost at each candidate and the weights they hold; the
    budget and the candidates checked against them (shapes only: ``net`` may be a skeleton)."""
    names = list(targets.select(net, cfg.target))
    groups = core.groups_of(net, names, cfg.scan.per)
    core.check_candidates(net, names, candidates)
    costs, weights = core.costs_of(net, groups, candidates, plan.key), core.weights_of(net, names)
    plan.check(costs, weights)
    return names, groups, costs, weights


def scan(cfg: Any, out: Path) -> dict[str, Any]:
    """The whole scan into ``out``; returns what scores.json holds."""
    started = time.perf_counter()
    candidates, plan = check(cfg)
    s = cfg.scan
    if (out / "scores.json").exists():
        raise ConfigError(f"scan.out={out} holds an earlier scan (scores.json), kept as it is; choose another scan.out")
    skeleton = model.skeleton(cfg.model)  # the budget against the costs before anything loads, where it can be
    if skeleton is not None:
        layout(skeleton, cfg, candidates, plan)
    device = torch.device("cuda" if job.uses_cuda(cfg) else "cpu")
    dataset = data.load(cfg.data, cfg.model).to(device)
    net, pipeline = build_dense(cfg, dataset.num_classes, device)
    names, groups, costs, weights = layout(net, cfg, candidates, plan)
    autocast = autocast_for(cfg.train, device)
    loss, batches = val_loss(dataset.val, pipeline, s.examples, cfg.train.eval_batch_size, autocast)
    log.info("scanning %d groups x %d candidates of %s on %d %s validation examples (%d forward passes each)",
             len(groups), len(candidates), cfg.model.name, min(s.examples, len(dataset.val)), cfg.data.name, batches)
    fisher, proxy_batches, clock = None, 0, time.perf_counter()
    if s.proxy:
        gradient_batches = batch_losses(dataset.val, pipeline, s.examples, s.proxy_batch_size, autocast)
        fisher, proxy_batches = core.fisher_of(net, names, gradient_batches, s.proxy_batch_size), len(gradient_batches)
    fisher_seconds = time.perf_counter() - clock
    scores = core.score(net, groups, candidates, loss, fisher, progress=sys.stderr.isatty())
    solved = core.solve(scores, costs, plan, weights)
    recipe = core.recipe_of(groups, candidates, solved["chosen"])
    joint, figures = joint_loss(net, cfg, recipe, loss)
    evaluations = scores.evaluations + 1
    if "proxy" in solved:
        proxy_recipe = core.recipe_of(groups, candidates, solved["proxy"]["chosen"])
        solved["proxy"]["joint_delta_loss"] = joint_loss(net, cfg, proxy_recipe, loss)[0] - scores.dense_loss
        solved["proxy"]["seconds"] = fisher_seconds + scores.proxy_seconds
        solved["proxy"]["gradient_passes"] = proxy_batches  # forward and backward, one batch each
        evaluations += 1
    result = {
        "model": cfg.model.name, "data": cfg.data.name, "per": s.per,
        "examples": min(s.examples, len(dataset.val)), "budget": {plan.key: plan.value, "total": plan.total(weights),
                                                                    "unit": core.UNITS[plan.key]},
        "weights": weights, "candidates": {label: config_of(c) for label, c in candidates.items()}, "groups": groups,
        "dense_loss": scores.dense_loss, "scores": scores.exact, "proxy_scores": scores.proxy, "costs": costs,
        **solved, "joint_delta_loss": joint - scores.dense_loss, "figures": figures,
        "forward_passes": evaluations * batches, "loss_evaluations": evaluations,
        "scan_seconds": scores.seconds, "wall_time_s": time.perf_counter() - started, "device": str(device),
        "settings": OmegaConf.to_container(s, resolve=True),
    }
    write(out, result, recipe, s.name)
    return result


def write(out: Path, result: dict[str, Any], recipe: Recipe, name: str) -> None:
    """scores.json, heatmap.png, scan.md and the recipe, compression/<name>.yaml."""
    path = out / "compression" / f"{name}.yaml"
    result["recipe"] = {"path": str(path), "command": f"python run.py --config-dir {out} compression={name}"}
    write_atomic(out / "scores.json", json.dumps(result, indent=2))
    budget = _budget_words(result)
    header = (f"# Chosen by vcon-scan (docs/budgets.md) for {result['model']} on {result['data']}: {budget}, "
              f"{result['figures']['bits_per_weight']:.4g} bits a weight chosen;\n# scores: Δ validation loss of "
              f"each group compressed alone, one-shot, {result['examples']} examples ({out / 'scores.json'}).\n"
              f"#   {result['recipe']['command']}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, header + OmegaConf.to_yaml(config_of(recipe)))
    write_atomic(out / "scan.md", markdown(result))
    figure = heatmap(result)
    figure.savefig(out / "heatmap.png", dpi=120)
    plt.close(figure)


def _budget_words(result: dict[str, Any]) -> str:
    key = next(k for k in ("bits_per_weight", "params") if k in result["budget"])
    return f"budget {key.replace('_', ' ')} {result['budget'][key]:g}"


def _cost_per_weight(result: dict[str, Any], label: str) -> str:
    if result["budget"]["unit"] == "bits":
        return f"{sum(c[label] for c in result['costs'].values()) / result['weights']:.2f} b/w"
    return f"{sum(c[label] for c in result['costs'].values()) / result['weights']:.1%} params"


def markdown(result: dict[str, Any]) -> str:
    """The scores as a table, group × candidate (the chosen cell in bold), and the figures below it."""
    labels = list(result["candidates"])
    lines = [f"# Sensitivity scan: {result['model']} on {result['data']}", "",
             f"Δ validation loss (dense: {result['dense_loss']:.4f}, mean over {result['examples']} examples) when "
             f"only that group is compressed, one-shot; **bold**: chosen under {_budget_words(result)}.", "",
             "| group | " + " | ".join(f"{label} ({_cost_per_weight(result, label)})" for label in labels) + " |",
             "|---|" + "---:|" * len(labels)]
    for group, row in result["scores"].items():
        cells = [f"**{row[label]:+.4f}**" if result["chosen"][group] == label else f"{row[label]:+.4f}"
                 for label in labels]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    f = result["figures"]
    lines += ["", f"Chosen: {f['bits_per_weight']:.4g} bits a weight, {f['params_after']} of {f['params_before']} "
              f"parameters; summed Δloss {result['summed_delta_loss']:+.4f}, all groups compressed together "
              f"{result['joint_delta_loss']:+.4f}.",
              f"Cost: {result['forward_passes']} forward passes ({result['loss_evaluations']} loss evaluations), "
              f"{result['wall_time_s']:.1f} s wall time on {result['device']}."]
    if "proxy" in result:
        p = result["proxy"]
        lines.append(f"Gradient proxy: Spearman {p['spearman']:.3f} with the measured Δloss over {p['pairs']} pairs; "
                     f"its allocation's summed Δloss {p['summed_delta_loss']:+.4f} (together "
                     f"{p['joint_delta_loss']:+.4f}); {p['gradient_passes']} gradient passes (forward and backward), "
                     f"{p['seconds']:.1f} s.")
    lines += ["", f"Recipe: `{result['recipe']['path']}`; `{result['recipe']['command']}`", ""]
    return "\n".join(lines)


def heatmap(result: dict[str, Any]) -> plt.Figure:
    """Δloss, group × candidate, on a symmetric log scale; the chosen cell of each group framed."""
    labels, groups = list(result["candidates"]), list(result["scores"])
    values = [[result["scores"][g][label] for label in labels] for g in groups]
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 3, 0.45 * len(groups) + 2.5))
    limit = max(abs(v) for row in values for v in row) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", norm=SymLogNorm(linthresh=1e-3, vmin=-limit, vmax=limit), aspect="auto")
    for i, g in enumerate(groups):
        for j, label in enumerate(labels):
            ax.text(j, i, f"{values[i][j]:.3f}", ha="center", va="center", fontsize=6)
        j = labels.index(result["chosen"][g])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    ax.set_xticks(range(len(labels)), [f"{label}\n{_cost_per_weight(result, label)}" for label in labels],
                  rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.set_title(f"Δ val loss, one group compressed ({result['model']}); framed: chosen, "
                 f"{result['figures']['bits_per_weight']:.3g} bits/weight", fontsize=9)
    fig.colorbar(image, ax=ax, label="Δ loss")
    fig.tight_layout()
    return fig


def _discard_if_empty(out: Path) -> None:
    """A refused scan leaves no folder: the one Hydra made for it goes, while it holds nothing but the scan's log."""
    if out.is_dir() and {entry.name for entry in out.iterdir()} <= {"scan.log"}:
        shutil.rmtree(out, ignore_errors=True)


@hydra.main(version_base=None, config_path=str(CONF), config_name=PRIMARY)
def _main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    try:
        result = scan(cfg, out)
    except VconError as error:
        _discard_if_empty(out)
        sys.exit(say("vcon-scan", error))
    print(markdown(result))
    print(f"the recipe: {result['recipe']['path']}\nrun it:     {result['recipe']['command']}")


def main() -> None:
    config.register()  # the resolvers, the schemas and the sweeps conf/ refers to, as run.py
    _main()


if __name__ == "__main__":
    main()
