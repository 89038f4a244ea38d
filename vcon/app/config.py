"""The Hydra side of vcon: the types of the config and what each key allows (structured-config schemas: types checked
while Hydra composes, so that ``train.lr=abc`` is refused in one line naming the key; ranges and choices by
``validate``, before anything is loaded), and ``register()``, which makes the resolvers, the schemas and the ready
sweeps known to Hydra and OmegaConf. ``import vcon`` does none of this: ``run.py`` and the tests call ``register()``
before composing.

Typed here: the top level, ``train``, ``vcon`` (the β schedule), ``target`` and ``tracking``. ``model``, ``data``,
``compression`` and ``method`` have options whose keys differ: each option's schema sits beside its registry entry
(``vcon.model.INPUTS``, ``vcon.data.LOADERS``, the compression and method classes themselves), and ``validate``
checks those groups against them; for OmegaConf they stay ``Any``. Every key, here and there, is declared with
``vcon.schema.setting``: what it allows, in one place.

Run identities (``vcon.app.identity``) hash the resolved config, so a schema must not change a value's type: a ``float``
field turns the yaml's ``3`` into ``3.0`` and with it every run id (and every finished run would be trained again).
So a key whose yaml value is an integer is an ``int`` when only integers make sense, and ``Any`` when fractions are
allowed too (``vcon.epochs``, ``train.warmup_epochs``); ``float`` only where the yaml value is already a float. The
ranges change no value: ``validate`` only reads."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from torch import nn

from vcon import schedule
from vcon.app import tracking
from vcon.compression import REGISTRY
from vcon.core import targets
from vcon.data import LOADERS
from vcon.distill import Distill
from vcon.errors import ConfigError, require
from vcon.method import METHODS
from vcon.model import INPUTS, inputs
from vcon.schema import (
    FLAG,
    Allowed,
    check_value,
    integer,
    items,
    number,
    one_of,
    optional,
    options,
    registered,
    setting,
    text,
)
from vcon.shipped import SWEEPS
from vcon.train import lr_schedule

# Every field is MISSING here (setting()'s default): the values, and their comments, live in conf/*.yaml.

AUTO_OR_FLAG = one_of("auto", True, False)
POSITIVE_NUMBER = number(above=0)
SEED = integer(0, 2**32 - 1, means="numpy's seeds")  # checkpoint.seed_everything seeds numpy too


@dataclass
class RandAugmentConfig:
    enabled: bool = setting(FLAG)
    n: int = setting(integer(1, means="operations per image"))
    m: int = setting(integer(0, 30, means="magnitude, torchvision's 31 bins"))


@dataclass
class AugmentConfig:
    mixup_alpha: float = setting(number(0, means="0: off"))
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)


@dataclass
class TrainConfig:
    """``conf/train/*.yaml`` (vcon/train/loop.py, which also checks how the keys fit together)."""

    epochs: int = setting(integer(1))
    batch_size: int = setting(integer(1))
    grad_accum: int = setting(integer(1))
    epoch_size: Optional[int] = setting(optional(integer(1), "a full pass over the training split"))
    lr: float = setting(POSITIVE_NUMBER)
    min_lr: float = setting(number(0))
    # Any, not float: the yaml's 1 must stay 1 (a float would make it 1.0 and change every run id); fractions of an
    # epoch are allowed.
    warmup_epochs: Any = setting(number(0, what="a number of epochs"))
    warmup_start_lr: float = setting(number(0))
    decay: str = setting(one_of(*sorted(lr_schedule.DECAYS)))
    weight_decay: float = setting(number(0))
    grad_clip: Optional[float] = setting(optional(POSITIVE_NUMBER, "no clipping"))  # a negative one would ascend
    precision: str = setting(one_of("auto", "fp32", "bf16"))
    compile: Any = setting(AUTO_OR_FLAG)
    cuda_graph: Any = setting(AUTO_OR_FLAG)
    eval_batch_size: int = setting(integer(1))
    log_every: int = setting(integer(1, means="optimizer steps"))
    checkpoint_every_min: float = setting(number(above=0, what="a number of minutes"))  # not in the run identity
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ScheduleConfig:
    """``conf/schedule/*.yaml``, under ``vcon.`` (vcon/schedule.py). The shapes with a parameter extend it below: a
    field for every shape's parameter here would add ``rate: null`` to every run's identity."""

    shape: str = setting(one_of(*sorted(schedule.SHAPES)))
    # Any, not float: Q = 3 epochs must stay 3 (3.0 would change every run id and the run folder's name), and
    # fractions of an epoch are allowed (vcon.epochs=1.5).
    epochs: Any = setting(number(0, what="a number of epochs", means="0 is one-shot compression"))
    steps: Optional[int] = setting(optional(integer(0), "Q in vcon.epochs"))


@dataclass
class ExpScheduleConfig(ScheduleConfig):
    rate: float = setting(POSITIVE_NUMBER)  # a float in conf/schedule/exp.yaml


@dataclass
class StepScheduleConfig(ScheduleConfig):
    stages: int = setting(integer(1))


def _as_in(schema: type, name: str) -> Any:
    """A key declared by a library dataclass, allowing what its field there allows: one declaration of each range."""
    return setting(next(f for f in dataclasses.fields(schema) if f.name == name).metadata["allowed"])


@dataclass
class DistillConfig:
    """``conf/distill/*.yaml`` (vcon/distill.py's ``Distill``, which declares what each key allows). Any, not float:
    the yaml's 0 must stay 0 (run ids)."""

    alpha: Any = _as_in(Distill, "alpha")
    temperature: Any = _as_in(Distill, "temperature")
    hidden: Any = _as_in(Distill, "hidden")


def _nn_module(name: Any) -> bool:
    return isinstance(name, str) and isinstance(getattr(nn, name, None), type) and issubclass(getattr(nn, name),
                                                                                               nn.Module)


PATTERN = text("a shell pattern")


@dataclass
class TargetConfig:
    """``target`` in conf/config.yaml (vcon/core/targets.py)."""

    within: str = setting(one_of(*targets.WITHIN))
    types: List[str] = setting(items(Allowed("", _nn_module), "a list of torch.nn module classes, e.g. [Linear]", 1))
    include: List[str] = setting(items(PATTERN, "a non-empty list of shell patterns over module names", 1))
    exclude: List[str] = setting(items(PATTERN, "a list of shell patterns over module names"))


NAME = optional(text("a name"), "none")


@dataclass
class WandbConfig:
    mode: str = setting(one_of(*tracking.WANDB_MODES))
    project: Optional[str] = setting(NAME)
    entity: Optional[str] = setting(NAME)
    group: Optional[str] = setting(optional(text("a name"), "the sweep's name"))
    tags: List[str] = setting(items(text("a tag"), "a list of tags"))


@dataclass
class TrackingConfig:
    """``tracking`` in conf/config.yaml (vcon/app/tracking.py)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    """The whole config, conf/config.yaml and its groups (``hydra:`` is Hydra's own, and typed by Hydra)."""

    seed: int = setting(SEED)
    device: str = setting(one_of("auto", "cpu", "cuda"))
    save_pretrained: bool = setting(FLAG)
    export: bool = setting(FLAG)
    outputs: str = setting(text("a folder"))
    sweep_name: str = setting(text("a name for the sweep's folder"))
    target: TargetConfig = field(default_factory=TargetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vcon: ScheduleConfig = field(default_factory=ScheduleConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # the groups whose options differ in their keys: each option's schema is its registry's
    model: Any = options(lambda: {name: kind.schema for name, kind in INPUTS.items()}, "inputs", inputs)
    data: Any = options(lambda: {name: loader.schema for name, loader in LOADERS.items()})
    compression: Any = options(lambda: REGISTRY)  # the classes themselves, vcon/compression/<name>.py
    method: Any = options(lambda: METHODS)  # likewise, vcon/method/__init__.py


def validate(cfg: Any, section: str = "") -> None:
    """Every key of the config ``cfg`` (or of its ``section``: ``validate(cfg.data, "data")``) against its schema: a
    known key, given, of its type and in its range or among its choices. Reads only, and loads nothing: the first
    bad key is refused in one line naming it and what it allows. (``hydra``, where a config is composed with
    Hydra's own, is typed by Hydra.)"""
    if not section:
        _check_section(cfg, Config, "", "the config", hydras="hydra")
        return
    (f,) = [f for f in dataclasses.fields(Config) if f.name == section]
    _check_key(cfg, f, section)


def _check_section(node: Any, schema: type, prefix: str, label: str, selector: str | None = None,
                   hydras: str | None = None) -> None:
    """The keys of ``node``, the section at ``prefix`` (``label`` names it in messages), against ``schema``'s fields
    (and the ``selector`` key that chose the schema, when it is an option; ``hydras``: a key Hydra types itself)."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    known = sorted([*fields, *([selector] if selector else [])])
    unknown = sorted(set(node) - set(known) - {hydras})
    if unknown:
        raise ConfigError(f"{label} has no setting(s) {unknown}; allowed: {known}")
    for name, f in fields.items():
        key = _join(prefix, name)
        if _is_set(node, name):
            _check_key(node[name], f, key)
        elif f.default == MISSING:  # not a key the section may leave out
            allowed = f.metadata.get("allowed")
            raise ConfigError(f"{key} is not set: expected {allowed.text if allowed else 'its settings'} ({key}=... "
                              "on the command line)")


def _check_key(value: Any, f: dataclasses.Field, key: str) -> None:
    """One key's value: a section (a typed one against the type it was composed with), a group's option (against
    the schema its registry gives), a list of options, or a setting."""
    if "options" in f.metadata:
        registry, selector, choose = f.metadata["options"]
        each = f.metadata["each"]
        what = f"settings with a {selector} (see conf/{key.split('.')[0]}/)"
        if each:
            require(isinstance(value, Sequence) and not isinstance(value, str), key, _plain(value), f"a list of {what}")
        for i, option in enumerate(value if each else [value]):
            where = f"{key}.{i}" if each else key
            require(isinstance(option, Mapping), where, _plain(option), what)
            schema = registered(registry(), f"{where}.{selector}", choose(option))
            _check_section(option, schema, where, f"{where}={option.get('name', choose(option))}", selector)
    elif "allowed" in f.metadata:
        check_value(key, _plain(value), f.metadata["allowed"])
    else:  # a section
        typed = OmegaConf.get_type(value) if isinstance(value, DictConfig) else None
        _check_section(value, typed if dataclasses.is_dataclass(typed) else f.default_factory, key, key)


def _is_set(node: Any, name: str) -> bool:
    if name not in node:
        return False
    return not OmegaConf.is_missing(node, name) if isinstance(node, DictConfig) else node[name] != MISSING


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


# Where conf/ finds the schemas: `- schema` first in conf/config.yaml's defaults list, `- /schema_schedule_<shape>`
# in the schedule options with a parameter. Stored outside any group, so that `python run.py --help` does not list
# them among the options. name: (schema, package)
SCHEMAS = {
    "schema": (Config, None),
    "schema_schedule_exp": (ExpScheduleConfig, "vcon"),
    "schema_schedule_step": (StepScheduleConfig, "vcon"),
}


def _run_id(*, _root_: Any) -> str:
    from vcon.app.identity import run_id

    return run_id(_root_)


def register() -> None:
    """Make everything conf/ and the sweeps refer to known to OmegaConf and Hydra: the resolvers ``${asset:name}``
    (a model shipped in the package) and ``${run_id:}`` (the run folder's name), the schemas above, and the ready
    sweeps (``+sweeps=<name>``). Idempotent: call it before composing a config (run.py does, before ``@hydra.main``
    runs)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from vcon.model import asset

    OmegaConf.register_new_resolver("asset", asset, replace=True)
    OmegaConf.register_new_resolver("run_id", _run_id, replace=True)
    store = ConfigStore.instance()
    for name, (node, package) in SCHEMAS.items():
        store.store(name=name, node=node, package=package)
    for path in sorted(SWEEPS.glob("*.yaml")):  # the ready sweeps, +sweeps=<name>
        store.store(group="sweeps", name=path.stem, node=OmegaConf.load(path), package="_global_")
