"""Vanishing Contributions: compress a network by fading each block into its compressed form while fine-tuning."""
__version__ = "0.1.0"

try:
    from omegaconf import OmegaConf
except ImportError:  # an exported model's runtime (vcon.export.load, vcon.compression) needs torch + transformers only
    OmegaConf = None

if OmegaConf is not None:
    from vcon import identity  # noqa: F401  (registers ${run_id:}, used by the run and sweep folders)
    from vcon.model import asset
    from vcon.sweep import register_sweeps

    OmegaConf.register_new_resolver("asset", asset, replace=True)
    register_sweeps()
