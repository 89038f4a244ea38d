"""What a run reports: ``results.json``, its headline, and the closing table (the compression figures in it are
``vcon.core.figures``')."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vcon.atomic import write_atomic
from vcon.train.metrics import LABELS


def headline(summary: dict[str, Any], of: str = "test") -> tuple[str, float]:
    """The run's headline: its task's metric (accuracy unless the data says otherwise) at β = 0 on the test split
    (``of="dense_test"``: the dense model's; ``of="val"``: on the validation split, what a sweeper tunes on), as
    (label, value)."""
    name = summary.get("metric", "accuracy")
    return LABELS[name], summary[f"{of}_{'acc' if name == 'accuracy' else 'metric'}"]


def val_headline(epoch: dict[str, Any]) -> float:
    """An epoch's validation figure of the β = 0 model in the headline metric."""
    return epoch.get("val_metric_compressed", epoch["val_acc_compressed"])


def write(summary: dict[str, Any], run_dir: Path) -> Path:
    return write_atomic(Path(run_dir) / "results.json", json.dumps(summary, indent=2))


def table(summary: dict[str, Any], title: str) -> str:
    """The closing table of a run, in Markdown (readable in a terminal, pastes into a README)."""
    c = summary["compression"]
    minutes, seconds = divmod(summary["wall_time_s"], 60)
    dense = summary["q_steps"] is None  # nothing was compressed: no transition
    (label, test), (_, dense_test) = headline(summary), headline(summary, "dense_test")
    rows = [
        (f"test {label} before" if dense else f"dense test {label}", f"{dense_test:.2f} %"),
        (f"test {label} after" if dense else f"compressed test {label} (β = 0)", f"{test:.2f} %"),
        ("compressed layers", f"{c['layers']}"),
        ("parameters in them, before → after", f"{c['params_before']:,} → {c['params_after']:,}"),
        ("zero weights in them", f"{100 * c['zero_fraction']:.1f} %"),
        ("bits per weight (fp32 = 32)", f"{c['bits_per_weight']:.2f}"),
        *[(f"group {group}: {g['name']}", f"{g['layers']} layers, {g['params_before']:,} → {g['params_after']:,} "
           f"parameters, {g['bits_per_weight']:.2f} bits/weight, {100 * g['zero_fraction']:.1f} % zeros")
          for group, g in c.get("groups", {}).items()],
        ("optimizer steps" if dense else "optimizer steps (of them in the transition, Q)",
         f"{summary['step']}" if dense else f"{summary['step']} ({summary['q_steps']})"),
        ("wall time", f"{int(minutes)} min {seconds:.0f} s"),
    ]
    exported = summary.get("export")  # export=true (vcon/export.py): what is realised on disk and on this CPU
    if exported:
        b, t = exported["bytes"], exported["latency"].get("batch_1")
        rows.append(("bytes on disk, dense → exported", f"{b['dense_model']:,} → {b['file']:,}"))
        if t:
            rows.append(("CPU latency at batch 1, dense → exported", f"{t['dense_ms']:.2f} → {t['exported_ms']:.2f} ms"
                         + (" (slower than dense)" if t["exported_slower_than_dense"] else "")))
    width = max(len(r[0]) for r in rows)
    lines = [title, "", f"| {'':{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)
