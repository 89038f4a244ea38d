"""The table of a sweep: per configuration, the β = 0 test accuracy as mean ± std over seeds, the compression
figures, and VCON's gain over the one-shot run of the same compression. Written when a multirun ends (a Hydra
callback) and again by ``vcon-report <sweep dir>``."""
from __future__ import annotations

import csv
import io
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from vcon.app import config
from vcon.app.identity import identity
from vcon.atomic import write_atomic
from vcon.compression import from_config
from vcon.distill import Distill
from vcon.errors import ConfigError
from vcon.method import VCON, Gradual
from vcon.method import from_config as method_from_config
from vcon.schedule import transition_length
from vcon.train.results import headline


def describe(ident: dict[str, Any]) -> tuple[str, str]:
    """(compression, transition) in words: ('prune 0.9 layer', 'VCON Q=3 ep linear'), 'gradual Q=3 ep cubic',
    'one-shot', each with ' + teacher α 0.5 T 2' where the dense model teaches; each compression and method names
    itself (``describe``)."""
    compression = _in_words(from_config, ident["compression"])
    if dense(ident):
        return compression, "–"
    taught = f" + {_in_words(lambda d: Distill(**d), ident['distill'])}" if "distill" in ident else ""
    return compression, _transition(ident) + taught


def _transition(ident: dict[str, Any]) -> str:
    if one_shot(ident):
        return "one-shot"
    vcon = ident["vcon"]
    q, unit = transition_length(vcon)
    method = method_of(ident)
    return f"{method} Q={q} steps {vcon['shape']}" if unit == "steps" else f"{method} Q={q:g} ep {vcon['shape']}"


def dense(ident: dict[str, Any]) -> bool:
    """Whether the run is dense fine-tuning: it has no transition (identity.py leaves it out)."""
    return ident.get("vcon") is None


def one_shot(ident: dict[str, Any]) -> bool:
    """Whether the run compresses at once: Q = 0, whatever its method."""
    return not dense(ident) and transition_length(ident["vcon"])[0] == 0


def method_name(ident: dict[str, Any]) -> str | None:
    """The run's method by its registry name ('vcon' also where the identity has no method section), None for a
    dense run."""
    return None if dense(ident) else ident.get("method", {}).get("name", VCON.name)


def method_of(ident: dict[str, Any]) -> str:
    """The run's method in words: 'VCON' (also where the identity has no method section, see identity.py), 'gradual'."""
    return _in_words(method_from_config, ident.get("method", {"name": VCON.name}))


def _in_words(build: Callable[[Any], Any], settings: dict[str, Any]) -> str:
    """``build(settings).describe()``; for a run refused for these settings, '<name> (refused settings)': it still
    gets a row, and its error."""
    try:
        return build(settings).describe()
    except ConfigError:
        return f"{settings.get('name', '')} (refused settings)"


def read_run(run_dir: Path) -> dict[str, Any]:
    """One run folder: its identity, and its results, error, or neither (unfinished)."""
    config.register()  # Hydra saves the config unresolved: ${asset:...} needs its resolver
    ident = identity(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    run = {"dir": run_dir.name, "identity": ident, "status": "unfinished"}
    if (run_dir / "results.json").exists():
        run.update(status="done", results=json.loads((run_dir / "results.json").read_text()))
    elif (run_dir / "error.json").exists():
        run.update(status="failed", error=json.loads((run_dir / "error.json").read_text())["error"])
    return run


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every run folder under ``sweep_dir`` (``read_run``)."""
    return [read_run(config_file.parents[1]) for config_file in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml"))]


def _without(ident: dict[str, Any], *keys: str) -> str:
    return json.dumps({k: v for k, v in ident.items() if k not in keys}, sort_keys=True)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _put_mean_std(row: dict[str, Any], key: str, values: list[float]) -> None:
    """``row[key_mean]``, and ``row[key_std]`` where there are two values or more (one has no spread to show)."""
    row[f"{key}_mean"], std = mean_std(values)
    if len(values) > 1:
        row[f"{key}_std"] = std


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per configuration (runs that differ only in seed): dense first, then each compression, one-shot
    before VCON."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(_without(run["identity"], "seed"), []).append(run)
    rows = []
    for members in groups.values():
        ident = members[0]["identity"]
        done = [r for r in members if r["status"] == "done"]
        compression, transition = describe(ident)
        data = ident["data"]["name"] + (f"/{ident['data']['task']}" if "task" in ident["data"] else "")
        row = {"model": ident["model"]["name"], "data": data, "compression": compression,
               "transition": transition, "runs": len(members), "done": len(done),
               "failed": sum(r["status"] == "failed" for r in members), "_ident": ident,
               "_method": method_name(ident), "_one_shot": one_shot(ident),
               "_acc": {r["identity"]["seed"]: headline(r["results"])[1] for r in done}}
        if done:
            row["metric"] = headline(done[0]["results"])[0]
            _put_mean_std(row, "test", list(row["_acc"].values()))
            figures = done[0]["results"]["compression"]
            row.update({k: figures[k] for k in ("zero_fraction", "bits_per_weight", "params_before", "params_after")})
            if "groups" in figures:  # a recipe: each group's figures beside the totals
                row["groups"] = _groups_in_words(figures["groups"])
            exported = done[0]["results"].get("export")  # present when the run was exported (vcon/export.py)
            if exported:
                row.update(bytes_on_disk=exported["bytes"]["file"],
                           dense_bytes_on_disk=exported["bytes"]["dense_model"])
                for batch, t in exported.get("latency", {}).items():
                    if batch.startswith("batch_"):
                        row[f"cpu_ms_{batch}_dense"], row[f"cpu_ms_{batch}_exported"] = t["dense_ms"], t["exported_ms"]
        rows.append(row)
    rows.sort(key=lambda r: (not dense(r["_ident"]), r["model"], r["data"], r["compression"], _rank(r),
                             r["transition"]))
    for row in rows:  # VCON against one-shot and gradual compression of the same compression, seed by seed
        if row["_method"] != VCON.name or row["_one_shot"]:
            continue
        row["_gains"] = {}
        for baseline, key in BASELINES.items():
            twin = next((r for r in rows if r["_acc"] and _baseline_of(r, row) == baseline), None)
            gains = [acc - twin["_acc"][seed] for seed, acc in row["_acc"].items() if seed in twin["_acc"]] if twin else []
            if gains:
                row["_gains"][baseline] = gains
                _put_mean_std(row, key, gains)
    return rows


def _groups_in_words(groups: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{g}: {f['bits_per_weight']:.2f} bits/weight, {100 * f['zero_fraction']:.1f} % zeros, "
                     f"{f['params_after']:,} / {f['params_before']:,} params" for g, f in groups.items())


BASELINES = {"one-shot": "gain", "gradual": "gain_gradual"}  # what VCON is compared with, and its columns' names


def _rank(row: dict[str, Any]) -> int:
    """Each compression's baselines (one-shot, gradual) before VCON."""
    return 0 if row["_one_shot"] else 1 if row["_method"] == Gradual.name else 2


def _baseline_of(candidate: dict[str, Any], row: dict[str, Any]) -> str | None:
    """Which baseline of the VCON ``row`` the ``candidate`` row is: the one-shot run of the same settings, the
    gradual run of the same settings and Q (its schedule's shape may differ), or neither (None)."""
    if _without(candidate["_ident"], "seed", "vcon", "method") != _without(row["_ident"], "seed", "vcon", "method"):
        return None
    if candidate["_one_shot"]:
        return "one-shot"
    gradual = candidate["_method"] == Gradual.name
    same_q = transition_length(candidate["_ident"]["vcon"]) == transition_length(row["_ident"]["vcon"])
    return "gradual" if gradual and same_q else None


COLUMNS = ["model", "data", "compression", "transition", "runs", "done", "failed", "metric", "test_mean", "test_std",
           "gain_mean", "gain_std", "gain_gradual_mean", "gain_gradual_std", "zero_fraction", "bits_per_weight", "params_before", "params_after",
           "bytes_on_disk", "dense_bytes_on_disk", "cpu_ms_batch_1_dense", "cpu_ms_batch_1_exported",
           "cpu_ms_batch_64_dense", "cpu_ms_batch_64_exported", "groups"]


def markdown(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> str:
    def pm(row: dict[str, Any], key: str, signed: bool = False) -> str:
        if f"{key}_mean" not in row:
            return "–"
        mean = f"{row[f'{key}_mean']:{'+' if signed else ''}.2f}"
        return f"{mean} ± {row[f'{key}_std']:.2f}" if f"{key}_std" in row else f"{mean} (one run)"

    metrics = sorted({r["metric"] for r in rows if "metric" in r}) or ["accuracy"]
    test = f"test {metrics[0]}" if len(metrics) == 1 else f"test {' / '.join(metrics)} (each data's own)"
    lines = [f"| model | data | compression | transition | runs (done/failed) | {test} β=0 (%) | VCON's gain over "
             "one-shot (points) | over gradual (points) | zeros | bits/weight | params after / before | bytes on disk, "
             "exported / dense |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        figures = (f"{100 * r['zero_fraction']:.1f} % | {r['bits_per_weight']:.2f} | "
                   f"{r['params_after']:,} / {r['params_before']:,}") if "zero_fraction" in r else "– | – | –"
        lines.append(f"| {r['model']} | {r['data']} | {r['compression']} | {r['transition']} | "
                     f"{r['runs']} ({r['done']}/{r['failed']}) | {pm(r, 'test')} | {pm(r, 'gain', True)} | "
                     f"{pm(r, 'gain_gradual', True)} | "
                     f"{figures} | {_on_disk(r)} |")
    recipes = {r["compression"]: r["groups"] for r in rows if "groups" in r}  # one line each, whatever its methods
    if recipes:  # the totals are in the table, each group's figures here
        lines += ["", "Recipes, group by group:", ""] + [f"* {name}: {groups}" for name, groups in recipes.items()]
    failures = [r for r in runs if r["status"] != "done"]
    if failures:
        lines += ["", "Not finished:", ""] + [f"* `{r['dir']}`: {r.get('error', 'unfinished')}" for r in failures]
    return "\n".join(lines)


def _on_disk(row: dict[str, Any]) -> str:
    if "bytes_on_disk" not in row:
        return "– (not exported)"
    return f"{row['bytes_on_disk']:,} / {row['dense_bytes_on_disk']:,}"


def write(sweep_dir: Path) -> str:
    runs = collect(sweep_dir)
    rows = summarize(runs)
    table = markdown(rows, runs)
    write_atomic(sweep_dir / "summary.md", table + "\n")  # two launches of one sweep may end at once
    text = io.StringIO(newline="")
    out = csv.DictWriter(text, COLUMNS, extrasaction="ignore")
    out.writeheader()
    out.writerows(rows)
    write_atomic(sweep_dir / "summary.csv", text.getvalue())
    return table


class SweepTable(Callback):
    """Hydra callback (``hydra.callbacks.sweep_table`` in conf/config.yaml)."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        print(f"\nSweep {sweep_dir}\n\n{write(sweep_dir)}\n\n(also in summary.md and summary.csv)")
        failed = [r["dir"] for r in collect(sweep_dir) if r["status"] == "failed"]
        if failed:  # the sweep went on past them; its exit status still says that not every run succeeded
            print(f"{len(failed)} run(s) failed: see their error.json", file=sys.stderr)
            sys.exit(1)
