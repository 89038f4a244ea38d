"""The Hydra side of vcon: the types of the config (structured-config schemas, checked while Hydra composes, so that
``train.lr=abc`` is refused in one line naming the key), and ``register()``, which makes the resolvers, the schemas and
the ready sweeps known to Hydra and OmegaConf. ``import vcon`` does none of this: ``run.py`` and the tests call
``register()`` before composing.

Typed here: the top level, ``train``, ``vcon`` (the β schedule), ``target`` and ``tracking``. Not typed (``Any``):
``model``, ``data``, ``compression`` and ``method``, whose options differ in their keys; their modules check them, with messages
that name the setting.

Run identities (``vcon.identity``) hash the resolved config, so a schema must not change a value's type: a ``float``
field turns the yaml's ``3`` into ``3.0`` and with it every run id (and every finished run would be trained again).
So a key whose yaml value is an integer is an ``int`` when only integers make sense, and ``Any`` when fractions are
allowed too (``vcon.epochs``, ``train.warmup_epochs``); ``float`` only where the yaml value is already a float."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from omegaconf import MISSING

# Every field is MISSING here: the values, and their comments, live in conf/*.yaml.


@dataclass
class RandAugmentConfig:
    enabled: bool = MISSING
    n: int = MISSING
    m: int = MISSING


@dataclass
class AugmentConfig:
    mixup_alpha: float = MISSING
    randaugment: RandAugmentConfig = field(default_factory=RandAugmentConfig)


@dataclass
class TrainConfig:
    """``conf/train/*.yaml`` (vcon/train.py)."""

    epochs: int = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    epoch_size: Optional[int] = MISSING
    lr: float = MISSING
    min_lr: float = MISSING
    # Any, not float: the yaml's 1 must stay 1 (a float would make it 1.0 and change every run id); fractions of an
    # epoch are allowed. vcon/train.py checks the range.
    warmup_epochs: Any = MISSING
    warmup_start_lr: float = MISSING
    decay: str = MISSING  # cosine | linear (vcon/lr_schedule.py)
    weight_decay: float = MISSING
    grad_clip: Optional[float] = MISSING
    precision: str = MISSING
    compile: Any = MISSING  # auto | true | false
    cuda_graph: Any = MISSING  # auto | true | false
    eval_batch_size: int = MISSING
    log_every: int = MISSING
    checkpoint_every_min: float = MISSING  # not in the run identity: 10 may become 10.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class ScheduleConfig:
    """``conf/schedule/*.yaml``, under ``vcon.`` (vcon/schedule.py). The shapes with a parameter extend it below: a
    field for every shape's parameter here would add ``rate: null`` to every run's identity."""

    shape: str = MISSING
    # Any, not float: Q = 3 epochs must stay 3 (3.0 would change every run id and the run folder's name), and
    # fractions of an epoch are allowed (vcon.epochs=1.5). vcon/schedule.py checks it.
    epochs: Any = MISSING
    steps: Optional[int] = MISSING


@dataclass
class ExpScheduleConfig(ScheduleConfig):
    rate: float = MISSING  # a float in conf/schedule/exp.yaml


@dataclass
class StepScheduleConfig(ScheduleConfig):
    stages: int = MISSING


@dataclass
class TargetConfig:
    """``target`` in conf/config.yaml (vcon/targets.py)."""

    within: str = MISSING
    types: List[str] = MISSING
    include: List[str] = MISSING
    exclude: List[str] = MISSING


@dataclass
class WandbConfig:
    mode: str = MISSING
    project: Optional[str] = MISSING
    entity: Optional[str] = MISSING
    group: Optional[str] = MISSING
    tags: List[str] = MISSING


@dataclass
class TrackingConfig:
    """``tracking`` in conf/config.yaml (vcon/tracking.py)."""

    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class Config:
    """The whole config, conf/config.yaml and its groups (``hydra:`` is Hydra's own, and typed by Hydra)."""

    seed: int = MISSING
    device: str = MISSING
    save_pretrained: bool = MISSING
    export: bool = MISSING
    outputs: str = MISSING
    sweep_name: str = MISSING
    target: TargetConfig = field(default_factory=TargetConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vcon: ScheduleConfig = field(default_factory=ScheduleConfig)
    model: Any = MISSING  # options differ in keys: vcon/model.py checks them
    data: Any = MISSING  # vcon/data.py
    compression: Any = MISSING  # vcon/compression/<name>.py
    method: Any = MISSING  # vcon/method.py


# Where conf/ finds the schemas: `- schema` first in conf/config.yaml's defaults list, `- /schema_schedule_<shape>`
# in the schedule options with a parameter. Stored outside any group, so that `python run.py --help` does not list
# them among the options. name: (schema, package)
SCHEMAS = {
    "schema": (Config, None),
    "schema_schedule_exp": (ExpScheduleConfig, "vcon"),
    "schema_schedule_step": (StepScheduleConfig, "vcon"),
}


def _run_id(*, _root_: Any) -> str:
    from vcon.identity import run_id

    return run_id(_root_)


def register() -> None:
    """Make everything conf/ and the sweeps refer to known to OmegaConf and Hydra: the resolvers ``${asset:name}``
    (a model shipped in the package) and ``${run_id:}`` (the run folder's name), the schemas above, and the ready
    sweeps (``+sweeps=<name>``). Idempotent: call it before composing a config (run.py does, before ``@hydra.main``
    runs)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from vcon.model import asset
    from vcon.sweep import register_sweeps

    OmegaConf.register_new_resolver("asset", asset, replace=True)
    OmegaConf.register_new_resolver("run_id", _run_id, replace=True)
    store = ConfigStore.instance()
    for name, (node, package) in SCHEMAS.items():
        store.store(name=name, node=node, package=package)
    register_sweeps()
