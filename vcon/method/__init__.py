"""How a run reaches its compressed model over the Q steps (the ``method`` config group).

* ``Vcon``, the paper's: every chosen block runs beside its compressed form, output ``β·f(x) + (1−β)·g(x)``, β
  falling from 1 to 0 along the schedule.
* ``Gradual``, the iterative baselines the paper compares against: nothing is blended; the compression itself grows
  in, at strength ``s = 1 − β`` along the same schedule. Pruning zeroes a growing fraction of the weights (Zhu &
  Gupta 2017), quantization binarises a growing fraction, largest magnitudes first (INQ, Zhou et al. 2017), low rank
  runs each layer at a falling rank. Its default shape is ``cubic``, which makes ``s`` Zhu & Gupta's ramp
  ``s_f·(1 − (1 − t/Q)^3)``.

Q = 0 is one-shot compression for both; after Q, both train the fully compressed model alike.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Union

from vcon.errors import ConfigError
from vcon.schema import check_fields, integer, setting


@dataclasses.dataclass(frozen=True)
class Vcon:
    name: ClassVar[str] = "vcon"

    def describe(self) -> str:
        return "VCON"


@dataclasses.dataclass(frozen=True)
class Gradual:
    """``svd_every``: optimizer steps between the SVDs of each low-rank layer's current weight during the ramp (an
    SVD per layer per step would cost more than the step); pruning and quantization follow every step."""

    name: ClassVar[str] = "gradual"
    svd_every: int = setting(integer(1, means="optimizer steps between SVDs"), 10)

    def __post_init__(self) -> None:
        check_fields(self, "method")

    def describe(self) -> str:
        return "gradual"


Method = Union[Vcon, Gradual]
METHODS: dict[str, type] = {cls.name: cls for cls in (Vcon, Gradual)}
VCON = Vcon()


def from_config(cfg: Any) -> Method:
    """The method a ``method`` config (``name`` and its settings) describes."""
    settings = dict(cfg)
    name = settings.pop("name", None)
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is not a known method; allowed: {sorted(METHODS)}")
    known = {f.name for f in dataclasses.fields(METHODS[name])}
    if set(settings) - known:
        raise ConfigError(f"method={name} has no setting(s) {sorted(set(settings) - known)}; allowed: {sorted(known)}")
    return METHODS[name](**settings)
