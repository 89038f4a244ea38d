"""Where metrics go (the ``tracking`` settings): TensorBoard in the run folder, and Weights & Biases (offline unless
you say otherwise), the same scalars in both. Only the main process tracks."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

WANDB_MODES = ("offline", "online", "disabled")  # tracking.wandb.mode (vcon/app/config.py)


class Tracker:
    def __init__(self, cfg: Any, run_dir: Path, run_name: str, group: str | None, resumed_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.tensorboard = SummaryWriter(str(run_dir / "tb"), purge_step=resumed_step)
        self.wandb = None
        w = cfg.tracking.wandb
        if w.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(
                mode=w.mode, project=w.project, entity=w.entity, group=w.group or group, name=run_name,
                tags=list(w.tags), dir=str(run_dir), id=wandb_id(run_dir), resume="allow",
                config=OmegaConf.to_container(cfg, resolve=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.tensorboard.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def finish(self, summary: dict[str, Any] | None = None, exit_code: int = 0) -> None:
        """Close both; also called when the run stops early (a signal, an error), so that the W&B run is
        flushed and a resumed process can continue it."""
        self.tensorboard.close()
        if self.wandb is not None:
            if summary:
                self.wandb.summary.update(summary)
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None


def wandb_id(run_dir: Path) -> str:
    """One W&B run per run folder: a resumed run continues the same W&B run instead of starting a duplicate."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
