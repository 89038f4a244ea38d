"""A recipe: a different compression for each group of layers (``compression=recipe-*``; the library's
``compress_(model, {pattern: compression, ...})``).

Each group names its modules by patterns over their full names and gives them a compression (``none``: left dense)
and, if it wants, its own transition (``vcon.*`` keys: Q and shape; by default the run's). Which group takes a module
is decided as torchao's ``FqnToConfig`` decides: **the group that names the module exactly, else the first group, in
order, with a pattern that matches it, else the default** (the library's ``"_default"`` key; in a config, a last
group with the pattern ``"*"``). A module no group takes is left dense. Patterns are shell patterns, as
``target.include``'s; ``re:<regex>`` is a regular expression over the whole name; ``{last}`` stands for the index of
the model's last block (``*.layer.{last}.*``: the last block, whatever the depth).

The recipe chooses only among the modules ``target`` (or the library's ``filter_fn``) already chose.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import Any, Callable

from vcon.compression.base import Compression, from_config, register, to_config
from vcon.errors import ConfigError, require
from vcon.schema import Allowed, setting

DEFAULT = "_default"  # the library's key for the compression of every module no pattern takes
TRANSITION_KEYS = ("epochs", "steps", "shape", "rate", "stages")  # a group's own vcon.* keys


@dataclasses.dataclass(frozen=True)
class Group:
    """One group of a recipe: the modules its ``patterns`` match, compressed by ``compression`` (``None``: left
    dense), on its own β schedule: ``schedule``, a ``vcon.Schedule`` (library), or the group's ``vcon.*`` keys
    over the run's (a config; ``vcon.train`` turns them into a schedule); ``None``: the one ``compress_`` is given."""

    patterns: tuple[str, ...]
    compression: Compression | None
    schedule: Any = None

    def exact(self) -> set[str]:
        """The full module names this group gives as they are (no wildcard): they take precedence."""
        return {p for p in self.patterns if not p.startswith("re:") and not any(c in p for c in "*?[{")}

    def matches(self, name: str, last: int | None) -> bool:
        return any(_match(p, name, last) for p in self.patterns)


def _match(pattern: str, name: str, last: int | None) -> bool:
    if "{last}" in pattern:
        if last is None:
            raise ConfigError(f"pattern {pattern!r} uses {{last}}, but this model has no repeated blocks to count")
        pattern = pattern.replace("{last}", str(last))
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _group_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) > 0 and all(isinstance(k, str) for k in value)


GROUPS = Allowed("a mapping of group names to their patterns and compression, e.g. "
                 "{mlp: {patterns: ['*.mlp.*'], name: lrd, rank: 16}}", _group_mapping)


@register
@dataclasses.dataclass
class Recipe(Compression):
    """``groups``: group name → ``Group``, or (from a config) ``{patterns: [...], name: <compression>, <its
    settings>, vcon: {epochs: ..., shape: ...}}``. Order is precedence (after exact names)."""

    name = "recipe"
    groups: Any = setting(GROUPS)

    def __post_init__(self) -> None:
        require(_group_mapping(self.groups), "compression.groups", self.groups, GROUPS.text)
        self.parts: dict[str, Group] = {str(k): _group(str(k), v) for k, v in self.groups.items()}
        self.groups = {k: group_config(g) for k, g in self.parts.items()}  # plain: the run's config and identity
        if all(g.compression is None or g.compression.dense for g in self.parts.values()):
            raise ConfigError(f"compression.groups={list(self.parts)} leave every module dense; allowed: at least one "
                              "group with a compression (or compression=none for the dense baseline)")

    @classmethod
    def of(cls, patterns: Mapping[str, Compression | None | Group]) -> "Recipe":
        """The library's form, torchao's: ``{pattern: compression}``, ``None`` for dense, ``"_default"`` for every
        module no pattern takes; each pattern is a group of its own name."""
        groups = {k: v if isinstance(v, Group) else Group((k,), v) for k, v in patterns.items() if k != DEFAULT}
        if DEFAULT in patterns:
            default = patterns[DEFAULT]
            groups["default"] = default if isinstance(default, Group) else Group(("*",), default)
        return cls(groups)

    def describe(self) -> str:
        return "; ".join(f"{name}: {_describe(g.compression)}" for name, g in self.parts.items())

    def assign(self, names: Sequence[str], last: int | None = None) -> dict[str, list[str]]:
        """Which of ``names`` each group takes (precedence: the module docstring's). Refused: a name that two groups
        give exactly (precedence cannot decide), and a group left without a module (but a catch-all, ``"*"``, the
        default, may find nothing left)."""
        exact: dict[str, str] = {}
        for group, g in self.parts.items():
            for name in g.exact():
                if name in exact:
                    raise ConfigError(f"compression.groups.{exact[name]} and compression.groups.{group} both name "
                                      f"module {name} exactly, so precedence cannot decide; allowed: name it in one "
                                      "group only")
                exact[name] = group
        taken: dict[str, list[str]] = {group: [] for group in self.parts}
        for name in names:
            group = exact.get(name) or next((k for k, g in self.parts.items() if g.matches(name, last)), None)
            if group is not None:
                taken[group].append(name)
        for group, got in taken.items():
            if not got and "*" not in self.parts[group].patterns:  # a catch-all may find nothing left
                raise ConfigError(self._empty(group, names, taken, last))
        return taken

    def _empty(self, group: str, names: Sequence[str], taken: dict[str, list[str]], last: int | None) -> str:
        patterns = list(self.parts[group].patterns)
        matched = [n for n in names if self.parts[group].matches(n, last)]
        if not matched:
            return (f"compression.groups.{group}.patterns={patterns} match no module that target chooses; those "
                    f"include {list(names)[:6]}")
        earlier = sorted({k for k, got in taken.items() if set(got) & set(matched)})
        return (f"compression.groups.{group}.patterns={patterns} match only modules that groups {earlier} take first "
                f"(exact names, then the groups in order), e.g. {matched[0]}; move the group up or narrow the others")

    def scheduled(self, resolve: Callable[[str, Any], Any]) -> "Recipe":
        """A copy whose groups' schedules are ``resolve(group name, the group's schedule)`` (the app turns a group's
        ``vcon.*`` keys into a ``Schedule`` here); its config (``to_config``) stays this one's."""
        out = dataclasses.replace(self)
        out.parts = {k: dataclasses.replace(g, schedule=resolve(k, g.schedule)) for k, g in self.parts.items()}
        return out


def _describe(compression: Compression | None) -> str:
    return "dense" if compression is None else compression.describe()


def _group(name: str, spec: Any) -> Group:
    """A group from its config (``{patterns, name, <settings>, vcon}``), every key checked, errors naming it."""
    if isinstance(spec, Group):
        return spec
    where = f"compression.groups.{name}"
    require(isinstance(spec, Mapping), where, spec, "a mapping: patterns, and a compression's name and settings")
    settings = dict(spec)
    patterns, transition = settings.pop("patterns", None), settings.pop("vcon", None)
    require(isinstance(patterns, Sequence) and not isinstance(patterns, str) and len(patterns) > 0
            and all(isinstance(p, str) and p for p in patterns), f"{where}.patterns", patterns,
            "a non-empty list of shell patterns over full module names ('re:' for a regular expression)")
    for p in patterns:
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except re.error as e:
                raise ConfigError(f"{where}.patterns: {p!r} is not a regular expression ({e})") from None
    require(transition is None or (isinstance(transition, Mapping) and set(transition) <= set(TRANSITION_KEYS)),
            f"{where}.vcon", transition, f"null (the run's vcon.*) or a mapping of some of {list(TRANSITION_KEYS)}")
    compression = in_group(name, lambda: from_config(settings))
    if isinstance(compression, Recipe):
        raise ConfigError(f"{where}.name=recipe is not allowed: a group holds one compression (a chain for several)")
    return Group(tuple(patterns), None if compression.dense else compression,
                 None if transition is None else dict(transition))


def in_group(group: str, build: Callable[[], Any]) -> Any:
    """``build()``; a compression's refusal then names the recipe's group: ``compression.rank`` is
    ``compression.groups.<group>.rank`` (its other keys, patterns and vcon, said beside its settings)."""
    try:
        return build()
    except ConfigError as e:
        where = f"compression.groups.{group}"
        message = str(e).replace("compression.", f"{where}.").replace("compression=", f"{where}=")
        raise ConfigError(message + (" (and patterns, vcon)" if "has no setting" in message else "")) from None


def as_recipe(compression: Compression | Mapping[str, Any]) -> Recipe | None:
    """What ``compress_`` is given, as a recipe (a mapping is the library's form, ``Recipe.of``); None for one
    compression, which takes every chosen module."""
    if isinstance(compression, Recipe):
        return compression
    return Recipe.of(compression) if isinstance(compression, Mapping) else None


def group_config(group: Group) -> dict[str, Any]:
    """A group as a plain config, the form ``Recipe`` reads back: its patterns, compression and transition."""
    compression = {"name": "none"} if group.compression is None else to_config(group.compression)
    schedule = group.schedule
    if schedule is not None and not isinstance(schedule, Mapping):  # a Schedule: Q in steps, its shape
        schedule = {"steps": schedule.q_steps, "shape": schedule.shape, **schedule.params}
    return {"patterns": list(group.patterns), **compression} | ({} if schedule is None else {"vcon": dict(schedule)})


def config_of(compression: Compression | Mapping[str, Any]) -> dict[str, Any]:
    """The plain config of what ``compress_`` was given (a library mapping: that of its recipe)."""
    return to_config(as_recipe(compression) if isinstance(compression, Mapping) else compression)
