"""What every method is (the ``method`` config group): how it puts a compressed module in a layer's place, and what
it does as the optimizer steps. Each method is one module here, registered by name in ``vcon/method/__init__.py``."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Method:
    """Base of the methods: small frozen dataclasses built from the ``method`` config."""

    name: ClassVar[str]
    capturable: ClassVar[bool] = True  # its training step can be replayed as one CUDA graph (vcon/train/cuda_graph.py)

    def describe(self) -> str:
        """The method in a word, for tables and logs."""
        return self.name

    def check(self, compression: Any) -> None:
        """Raise ``ConfigError`` for a compression this method cannot drive; called before the model changes."""

    def wrap(self, compression: Any, module: nn.Module, beta: Any) -> nn.Module:
        """The module that stands for ``module`` while ``compression`` comes in, driven by ``beta``."""
        raise NotImplementedError

    def strength(self, beta: Any) -> float:
        """How much of the compression the wrapped layers apply at ``beta`` (all of it: the blend is β's business)."""
        return 1.0

    def after_step(self, layers: list[nn.Module], step: int, beta: Any) -> None:
        """After optimizer step ``step``, with β already set for the next one: anything the wrapped ``layers`` need."""

    def scalars(self, beta: Any, compression: Any, shapes: list[torch.Size]) -> dict[str, float]:
        """Where the transition stands beyond β, for the logs (``shapes``: the (out, in) of the wrapped layers)."""
        return {}
