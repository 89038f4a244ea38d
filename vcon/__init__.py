"""Vanishing Contributions: compress a network by fading each block into its compressed form while fine-tuning."""
from omegaconf import OmegaConf

from vcon import identity  # noqa: F401  (registers ${run_id:}, used by the run and sweep folders)
from vcon.model import asset
from vcon.sweep import register_sweeps

__version__ = "0.1.0"

OmegaConf.register_new_resolver("asset", asset, replace=True)
register_sweeps()
