"""How a run reaches its compressed model over the Q steps (the ``method`` config group), one module a method:

* ``vcon.py``, the paper's: every chosen block runs beside its compressed form (``blend.py``), output
  ``β·f(x) + (1−β)·g(x)``, β falling from 1 to 0 along the schedule.
* ``gradual.py``, the iterative baselines the paper compares against: the compression itself grows in, at strength
  ``1 − β`` along the same schedule.

Q = 0 is one-shot compression for both; after Q, both train the fully compressed model alike. Adding a method: a
module here with a ``Method`` subclass (``base.py``), its entry in ``METHODS``, and a yaml in conf/method/.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from vcon.errors import ConfigError
from vcon.method.base import Method
from vcon.method.gradual import Gradual
from vcon.method.vcon import VCON, Vcon

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Vcon, Gradual)}


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


__all__ = ["METHODS", "VCON", "Gradual", "Method", "Vcon", "from_config"]
