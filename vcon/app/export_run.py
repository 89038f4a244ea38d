"""``vcon-export <run dir>``: a finished run's β = 0 model into real compressed storage (``vcon.export``), its
figures added to the run's ``results.json``. The run folder is read as the app wrote it: its Hydra config, its
checkpoint (loaded without running code: ``vcon.train.checkpoint.read``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vcon import atomic, export, model
from vcon.app import config, identity
from vcon.compression import from_config
from vcon.core import targets
from vcon.core.controller import compress_
from vcon.errors import ExportError, VconError, say
from vcon.train import checkpoint, results


def export_run(run_dir: str | Path, out: str | Path | None = None, timing_s: float = 1.0) -> dict[str, Any]:
    """Export a run folder's final β = 0 model into ``out`` (default ``<run dir>/export``); the figures also go into
    the run's ``results.json`` under ``export``."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "export"
    export.check_target(out)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise ExportError(f"{run_dir} is not a run folder: it has no .hydra/config.yaml")
    config.register()  # Hydra saves the config unresolved: ${asset:...} needs its resolver
    cfg = OmegaConf.load(config_file)
    compression = from_config(cfg.compression)
    if compression.dense:
        raise ExportError(export.NOTHING_TO_EXPORT)
    path = run_dir / checkpoint.FILENAME
    if not path.is_file():
        raise ExportError(f"{run_dir} has no {checkpoint.FILENAME}: the run has not reached β = 0")
    try:
        state = checkpoint.read(path)  # the last one only: an earlier one is not the run's final model
    except checkpoint.Damaged as e:
        raise ExportError(f"{e}; the run's own command writes it again, resuming from {checkpoint.PREVIOUS} if that "
                          "one is intact") from e
    if state["identity"] != identity.identity(cfg):
        raise ExportError(f"{path} is a checkpoint of another run than {config_file} describes (foreign checkpoint)")
    if state["controller"]["beta"] != 0:
        raise ExportError(f"the run in {run_dir} is at β = {state['controller']['beta']:.4f}, not 0: only the fully "
                          "compressed model can be exported; finish the run first (the same command resumes it)")
    head = [v for v in state["model"].values() if v.dim() == 2][-1]  # the classifier: its rows are the classes
    net = model.build(cfg.model, head.shape[0])
    controller = compress_(net, compression, filter_fn=targets.from_config(net, cfg.target))  # one-shot: β = 0
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ExportError(f"{path} does not fit the model {run_dir}/.hydra/config.yaml builds (foreign "
                          f"checkpoint): {str(e)[:300]}") from e
    with atomic.said_when_full(out.parent, f"the export {out}", "nothing of it was kept (the run is as it was)"):
        figures = export.export_model(controller, out, timing_s)
    if (run_dir / "results.json").exists():
        summary = json.loads((run_dir / "results.json").read_text())
        results.write(summary | {"export": figures | {"folder": str(out)}}, run_dir)
    return figures



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vcon-export", description="Export a finished run's β = 0 model into "
                                     "real compressed storage, and measure it.")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="a new or empty folder (default: <run dir>/export)")
    parser.add_argument("--timing-s", type=float, default=1.0, help="seconds per latency measurement (0: none)")
    args = parser.parse_args(argv)
    try:
        figures = export_run(args.run_dir, args.out, args.timing_s)
    except VconError as e:
        return say("vcon-export", e)
    print(export.table(figures, f"Export of {args.run_dir} -> {args.out or args.run_dir / 'export'}"))
    return 0
