"""VCON, the paper's method (``method=vcon``): every chosen block runs beside its compressed form, output
``β·f(x) + (1−β)·g(x)``, β falling from 1 to 0 along the schedule (the blended modules: ``vcon/method/blend.py``)."""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import nn

from vcon.method.base import Method


@dataclasses.dataclass(frozen=True)
class Vcon(Method):
    name: ClassVar[str] = "vcon"

    def describe(self) -> str:
        return "VCON"

    def wrap(self, compression: Any, module: nn.Module, beta: Any) -> nn.Module:
        return compression.blend(module, beta)


VCON = Vcon()
