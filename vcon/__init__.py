"""Vanishing Contributions: compress a network by fading each block into its compressed form while fine-tuning.

The library, for any training loop (torch and transformers only; Hydra is the ``run.py`` app's)::

    from vcon import compress_, Prune, Schedule
    controller = compress_(model, Prune(ratio=0.9), schedule=Schedule("linear", q_steps=384))
    # or a recipe, one compression a group of layers (None: dense):
    # compress_(model, {"*.attention.*": Quant(bits=1), "*.mlp.*": LowRank(rank=16), "_default": None}, ...)
    ...                                   # after each optimizer step:
    controller.step(optimizer)
"""
from vcon.compression.chain import Chain
from vcon.compression.lrd import LowRank
from vcon.compression.prune import Prune
from vcon.compression.quant import Quant
from vcon.compression.recipe import Group, Recipe
from vcon.core.controller import Controller, compress_
from vcon.schedule import Schedule

__version__ = "0.1.0"
__all__ = ["Chain", "Controller", "Group", "LowRank", "Prune", "Quant", "Recipe", "Schedule", "compress_"]
