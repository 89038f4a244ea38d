"""What each setting allows, declared once beside its key, and the checks that read those declarations.

A schema is a dataclass whose fields are the keys of a config section, each declared with ``setting(allowed)``:
``integer(1)`` (an integer >= 1), ``number(above=0)``, ``one_of("auto", True, False)``, ``optional(integer(1),
"all")`` and a few more below. The structured configs of ``vcon/app/config.py`` are such schemas; so are the
compressions and methods themselves (``Prune.ratio``) and the schema of each ``model`` and ``data`` option, beside
its registry entry. ``vcon.app.config.validate`` walks a whole config against them; a dataclass built in Python checks
its own fields with ``check_fields``. A refused value is one line: ``<key>=<value> is not allowed: expected
<allowed>``.

Values are tested for what they are, not for what Python would make of them: ``true`` is not the integer 1, the
string ``'no'`` is not false, and nan and inf are no numbers. No OmegaConf here: ``import vcon`` stays without it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from vcon.errors import require

REQUIRED = "???"  # OmegaConf's MISSING: a key that must be given (in conf/*.yaml or on the command line)


@dataclasses.dataclass(frozen=True)
class Allowed:
    """``test(value)`` is True for the values a key takes; ``text`` says which, after "expected"."""

    text: str
    test: Callable[[Any], bool]

    def __or__(self, other: "Allowed") -> "Allowed":
        return Allowed(f"{self.text}, or {other.text}", lambda v: self.test(v) or other.test(v))


def setting(allowed: Allowed, default: Any = REQUIRED) -> Any:
    """A schema field: the key takes what ``allowed`` allows; without ``default`` it must be given."""
    return dataclasses.field(default=default, metadata={"allowed": allowed})


def options(registry: Callable[[], Mapping[str, type]], key: str = "name", choose: Callable[[Any], Any] | None = None,
            each: bool = False) -> Any:
    """A field holding one of several options whose keys differ: ``registry()`` maps the option named by ``key``
    (``choose(values)``, when the option may leave ``key`` out) to its schema. ``each``: a list of such options."""
    metadata = {"options": (registry, key, choose or (lambda values: values.get(key))), "each": each}
    if each:
        return dataclasses.field(default_factory=list, metadata=metadata)
    return dataclasses.field(default=REQUIRED, metadata=metadata)


def _yaml(value: Any) -> str:
    """A choice as it is written in yaml and on the command line."""
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _range(low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    return f" {'<' if high_open else '<='} {high}" if high is not None else ""


def _within(value: Any, low: Any, high: Any, low_open: bool = False, high_open: bool = False) -> bool:
    return ((low is None or (value > low if low_open else value >= low))
            and (high is None or (value < high if high_open else value <= high)))


def _means(text: str, means: str | None) -> str:
    return f"{text} ({means})" if means else text


def integer(low: int | None = None, high: int | None = None, means: str | None = None) -> Allowed:
    """An integer (not a bool) in ``[low, high]``: ``integer(1)`` is "an integer >= 1"."""
    return Allowed(_means("an integer" + _range(low, high), means),
                   lambda v: _is_integer(v) and _within(v, low, high))


def number(low: float | None = None, high: float | None = None, *, above: float | None = None,
           below: float | None = None, what: str = "a number", means: str | None = None) -> Allowed:
    """A finite int or float from ``low`` (or ``above``, excluded) to ``high`` (or ``below``, excluded)."""
    open_lo, open_hi = above is not None, below is not None
    lo, hi = above if open_lo else low, below if open_hi else high
    return Allowed(_means(what + _range(lo, hi, open_lo, open_hi), means),
                   lambda v: _is_number(v) and _within(v, lo, hi, open_lo, open_hi))


def one_of(*choices: Any) -> Allowed:
    """Exactly one of ``choices``: ``one_of("auto", True, False)`` takes neither ``1`` nor ``'no'``."""
    spelled = [_yaml(c) for c in choices]
    listed = f"{', '.join(spelled[:-1])} or {spelled[-1]}" if len(spelled) > 1 else spelled[0]
    return Allowed(f"one of {listed}", lambda v: any(type(v) is type(c) and v == c for c in choices))


def optional(allowed: Allowed, null_means: str) -> Allowed:
    """null (meaning ``null_means``) or what ``allowed`` allows."""
    return Allowed(f"null ({null_means}) or {allowed.text}", lambda v: v is None or allowed.test(v))


def text(what: str) -> Allowed:
    """A non-empty string, described as ``what``."""
    return Allowed(what, lambda v: isinstance(v, str) and v.strip() != "")


FLAG = Allowed("true or false", lambda v: isinstance(v, bool))
MAPPING = Allowed("a mapping of settings", lambda v: isinstance(v, Mapping))


def items(each: Allowed, what: str, at_least: int = 0, at_most: int | None = None) -> Allowed:
    """A list (not a string) of ``at_least`` to ``at_most`` values, each allowed by ``each``."""
    return Allowed(what, lambda v: isinstance(v, Sequence) and not isinstance(v, str)
                   and _within(len(v), at_least, at_most) and all(each.test(x) for x in v))


def check_value(key: str, value: Any, allowed: Allowed) -> None:
    require(allowed.test(value), key, value, allowed.text)


def check_fields(instance: Any, section: str) -> None:
    """Each field of a dataclass ``instance`` against its ``setting``: ``check_fields(self, "compression")`` in a
    compression's ``__post_init__``."""
    for f in dataclasses.fields(instance):
        if "allowed" in f.metadata:
            check_value(f"{section}.{f.name}", getattr(instance, f.name), f.metadata["allowed"])


def check_settings(node: Mapping[str, Any], schema: type, section: str) -> None:
    """Each key of the config ``node`` that ``schema`` declares against its ``setting`` (a registry entry checking
    its own section: ``check_settings(cfg.data, loader.schema, "data")``). Unknown and missing keys are the whole
    config's check, ``vcon.app.config.validate``."""
    for f in dataclasses.fields(schema):
        if "allowed" in f.metadata and f.name in node:
            check_value(f"{section}.{f.name}", node[f.name], f.metadata["allowed"])


def registered(registry: Mapping[str, Any], key: str, name: Any) -> Any:
    """``registry[name]``, refused naming ``key`` and the registered names when there is none."""
    require(isinstance(name, str) and name in registry, key, name, one_of(*sorted(registry)).text)
    return registry[name]
