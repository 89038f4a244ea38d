"""Entry point: ``python run.py [group=option ...] [key=value ...]``; ``-m`` sweeps. The work is ``vcon.train.loop.run``."""
import json
import logging
import shutil
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from vcon.app import config, job
from vcon.atomic import disk_full, write_atomic
from vcon.errors import VconError, say
from vcon.train import results

log = logging.getLogger("vcon")
config.register()  # the ${asset:...} and ${run_id:} resolvers, the schemas and the sweeps conf/ refers to
# Hydra's own files in a run folder, there before main() runs: a folder holding nothing else has no run in it
HYDRA_FILES = {".hydra", "run.log", ".lock"}


@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    name = hydra_cfg.job.override_dirname or run_dir.name  # readable: the overrides that made this run
    try:
        summary = job.run(cfg, run_dir, run_name=name, group=cfg.sweep_name if in_sweep else None)
    except Exception as error:  # noqa: BLE001  (a sweep goes on past a failed job; a single run says why it failed)
        if in_sweep:
            return _record_failure(run_dir, error)
        expected = error if isinstance(error, VconError) else disk_full(
            error, run_dir, f"a file of the run in {run_dir}", "its last checkpoint is kept as it was")
        if expected is None:  # a bug in vcon: its traceback
            raise
        _discard_if_empty(run_dir)
        sys.exit(say("vcon", expected))
    if summary is None:  # not the main process of a multi-process run
        return None
    print(results.table(summary, f"VCON {cfg.compression.name} on {cfg.model.name} / {cfg.data.name}  ({run_dir})"))
    return results.headline(summary, "val")[1]  # what a sweeper tunes on: never the test split


def _discard_if_empty(run_dir: Path) -> None:
    """A refused run leaves no folder: remove the one Hydra made for it, but only while it holds nothing but Hydra's
    files. A folder with anything else (a checkpoint, results, tb/ of an earlier run, or any other file) stays."""
    try:
        if {entry.name for entry in run_dir.iterdir()} <= HYDRA_FILES:
            shutil.rmtree(run_dir, ignore_errors=True)
    except OSError:  # gone already, or not ours to read: leave it as it is
        pass


def _record_failure(run_dir: Path, error: Exception) -> None:
    """Write the job's error into its folder (the sweep's table lists it) and let the sweep go on."""
    log.error("run failed: %s: %s", type(error).__name__, error)
    write_atomic(run_dir / "error.json", json.dumps(
        {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}, indent=2))
    return None


if __name__ == "__main__":
    main()
