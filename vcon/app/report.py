"""``vcon-report <run or sweep dir>``: a Markdown report with PNG plots in ``<dir>/report/``.

* accuracy per epoch of the β = 0 model, VCON against one-shot, one panel per compression (the paper's figures);
* VCON's gain over one-shot per compression, every seed shown;
* accuracy against Q, where the sweep varies Q;
* β over the optimizer steps of each schedule in the sweep.

The functions return matplotlib figures, so the notebook in ``notebooks/`` shows the same plots interactively."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from vcon.app import sweep
from vcon.errors import VconError, say
from vcon.schedule import Schedule, transition_length
from vcon.train import results


def load(path: Path) -> list[dict[str, Any]]:
    """The finished runs in ``path``: a run folder, or a folder of run folders (a sweep, ``outputs/runs``)."""
    path = Path(path)
    runs = [sweep.read_run(path)] if (path / "results.json").exists() else sweep.collect(path)
    done = [r for r in runs if r["status"] == "done"]
    if not done:
        raise SystemExit(f"vcon-report: no finished run (results.json) in {path} or the folders below it")
    return done


def _q_epochs(run: dict[str, Any]) -> float | None:
    vcon = run["identity"].get("vcon")
    if vcon is None:
        return None
    q, unit = transition_length(vcon)
    return q / run["results"]["steps_per_epoch"] if unit == "steps" else q


def _by(runs: list[dict[str, Any]], key) -> dict[Any, list[dict[str, Any]]]:
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[key(run)].append(run)
    return dict(groups)


def _metric(runs: list[dict[str, Any]]) -> str:
    """The headline metric's name (vcon/train/metrics.py), or all of them where the runs' data differ in it."""
    return " / ".join(sorted({results.headline(r["results"])[0] for r in runs})) or "accuracy"


def _labelled(fig: plt.Figure, ax: plt.Axes, **labels: str) -> plt.Figure:
    """The finishing touches every single-panel line plot here gets: labels, a light grid, the legend."""
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_per_epoch(runs: list[dict[str, Any]]) -> plt.Figure:
    """Validation accuracy of the β = 0 model per epoch, mean ± std over seeds; dense runs as a dashed reference."""
    dense = [r for r in runs if sweep.dense(r["identity"])]
    compressions = sorted({sweep.describe(r["identity"])[0] for r in runs if not sweep.dense(r["identity"])})
    panels = compressions or [sweep.describe(dense[0]["identity"])[0]]  # dense runs only: a panel of their own
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], panels, strict=False):
        members = [r for r in runs if sweep.describe(r["identity"])[0] == name]
        for transition, group in sorted(_by(members, lambda r: sweep.describe(r["identity"])[1]).items()):
            curves = [[results.val_headline(h) for h in r["results"]["history"]] for r in group]
            length = min(map(len, curves))
            stats = [sweep.mean_std([c[i] for c in curves]) for i in range(length)]
            epochs = range(1, length + 1)
            mean = [m for m, _ in stats]
            ax.plot(epochs, mean, marker="o", ms=3, label=f"{transition} (n={len(group)})")
            ax.fill_between(epochs, [m - s for m, s in stats], [m + s for m, s in stats], alpha=0.2)
        if dense and compressions:
            curves = [[results.val_headline(h) for h in r["results"]["history"]] for r in dense]
            ax.plot(range(1, len(curves[0]) + 1), [statistics.fmean(c) for c in zip(*curves, strict=False)], "k--",
                    lw=1, label="dense fine-tuning")
        ax.set(title=name, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"validation {_metric(runs)} at β = 0 (%)")
    fig.tight_layout()
    return fig


def gains(runs: list[dict[str, Any]]) -> plt.Figure | None:
    """VCON minus each baseline (one-shot, gradual) in test accuracy per compression, paired by seed: the bars are
    the means, dots the seeds."""
    rows = [r for r in sweep.summarize(runs) if r.get("_gains")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(rows), 3.6))
    width = 0.8 / len(sweep.BASELINES)
    for j, (baseline, color) in enumerate(zip(sweep.BASELINES, ("tab:blue", "tab:orange"))):
        drawn = [(i, row["_gains"][baseline]) for i, row in enumerate(rows) if baseline in row["_gains"]]
        if not drawn:
            continue
        x = [i + (j - (len(sweep.BASELINES) - 1) / 2) * width for i, _ in drawn]
        ax.bar(x, [statistics.fmean(seeds) for _, seeds in drawn], width, color=color, alpha=0.6,
               label=f"over {baseline}")
        for xi, (_, seeds) in zip(x, drawn):
            ax.scatter([xi] * len(seeds), seeds, color="k", s=12, zorder=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(rows)), [f"{r['compression']}\n{r['transition']}" for r in rows], fontsize=8)
    ax.set_ylabel(f"VCON − baseline, test {_metric(runs)} (points)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_q(runs: list[dict[str, Any]]) -> plt.Figure | None:
    """Test accuracy at β = 0 against the transition length Q: a line per compression and method (VCON, gradual)
    that was run with 3 Qs or more, the one-shot runs (Q = 0) starting each."""
    series = {}
    for name, group in _by([r for r in runs if _q_epochs(r) is not None],
                           lambda r: sweep.describe(r["identity"])[0]).items():
        one_shot = [r for r in group if _q_epochs(r) == 0]
        for method, members in _by([r for r in group if _q_epochs(r) != 0],
                                   lambda r: sweep.method_of(r["identity"])).items():
            by_q = _by(one_shot + members, _q_epochs)
            if len(by_q) >= 3:
                series[f"{name}, {method}"] = by_q
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by_q in sorted(series.items()):
        qs = sorted(by_q)
        stats = [sweep.mean_std([results.headline(r["results"])[1] for r in by_q[q]]) for q in qs]
        ax.errorbar(qs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=name)
    return _labelled(fig, ax, xlabel="Q (epochs; 0 = one-shot)", ylabel=f"test {_metric(runs)} at β = 0 (%)")


def beta_curves(runs: list[dict[str, Any]]) -> plt.Figure | None:
    """β over the optimizer steps for every distinct schedule (computed by the schedule itself)."""
    schedules = {}
    for run in runs:
        vcon = run["identity"].get("vcon")
        if vcon is None or not run["results"].get("q_steps"):
            continue
        params = {k: vcon[k] for k in ("rate", "stages") if k in vcon}
        key = (vcon["shape"], run["results"]["q_steps"], json.dumps(params, sort_keys=True))
        schedules[key] = (Schedule(vcon["shape"], run["results"]["q_steps"], params), run["results"]["step"])
    if not schedules:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for (shape, q, _), (schedule, total) in sorted(schedules.items()):
        steps = range(total + 1)
        ax.plot(steps, [schedule.beta(t) for t in steps], label=f"{shape}, Q = {q} steps")
    return _labelled(fig, ax, xlabel="optimizer step", ylabel="β (1 = original, 0 = compressed)")


PLOTS = {"accuracy_per_epoch": accuracy_per_epoch, "gain": gains, "accuracy_vs_q": accuracy_vs_q,
         "beta": beta_curves}


def write(path: Path) -> Path:
    """Write ``<path>/report/report.md`` and its PNGs; returns the Markdown file."""
    path = Path(path)
    runs = load(path)
    out = path / "report"
    out.mkdir(exist_ok=True)
    single = (path / "results.json").exists()
    if not single:
        sweep.write(path)  # summary.md and summary.csv, brought up to date
    every = runs if single else sweep.collect(path)  # a sweep's table also lists its unfinished and failed runs
    lines = [f"# VCON report: {path.name}", "", sweep.markdown(sweep.summarize(runs), every), ""]
    for name, plot in PLOTS.items():
        fig = plot(runs)
        if fig is None:
            continue
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
        lines += [f"![{name}]({name}.png)", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vcon-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="a run folder, or a sweep folder holding run folders")
    args = parser.parse_args(argv)
    if not args.path.is_dir():
        raise SystemExit(f"vcon-report: {args.path} is not a folder")
    try:
        report = write(args.path)
    except VconError as error:  # a run's settings that cannot be read back, a full disk
        sys.exit(say("vcon-report", error))
    print(report.read_text())
    print(f"\nwritten: {report} and the PNGs beside it")


if __name__ == "__main__":
    main()
