"""Every key of every config group has a type and a range (vcon/schema.py, vcon/app/config.py): a bad value, an unknown
key or a key left unset is refused in one line naming it, through the real Hydra compose, before anything loads."""
import dataclasses
import subprocess
import sys

import pytest
from conftest import CONF, ROOT, make_config

from vcon.app import job
from vcon.errors import ConfigError

IMAGEFOLDER = ("data=imagefolder", "data.path=/tmp")  # validate() refuses before the folder is looked at
IMAGENET = ("data=imagenet",)
GLUE = ("data=glue", "model=bert-micro")
TEXT_FILES = ("data=text-files", "data.path=/tmp", "model=bert-micro")
ROTTEN = ("data=rotten-tomatoes", "model=bert-micro-scratch")

# (overrides, the start of the message): one wrong type, negative, zero, out of range or unknown choice per key
BAD = [
    (("seed=-1",), "seed=-1 is not allowed: expected an integer in [0, 4294967295]"),
    (("device=tpu",), "device='tpu' is not allowed: expected one of auto, cpu or cuda"),
    (("outputs=",), "outputs='' is not allowed"),
    (("sweep_name=",), "sweep_name='' is not allowed"),
    (("target.within=some",), "target.within='some' is not allowed: expected one of blocks or all"),
    (("target.types=[Dense]",), "target.types=['Dense'] is not allowed"),
    (("target.types=[]",), "target.types=[] is not allowed"),
    (("target.include=[]",), "target.include=[] is not allowed"),
    (("tracking.wandb.mode=maybe",), "tracking.wandb.mode='maybe' is not allowed"),
    (("train.epochs=0",), "train.epochs=0 is not allowed: expected an integer >= 1"),
    (("train.batch_size=-8",), "train.batch_size=-8 is not allowed: expected an integer >= 1"),
    (("train.grad_accum=0",), "train.grad_accum=0 is not allowed: expected an integer >= 1"),
    (("train.grad_accum=3",), "train.batch_size=128 is not allowed: expected an integer >= 1 divisible by"),
    (("train.epoch_size=0",), "train.epoch_size=0 is not allowed"),
    (("train.epoch_size=10",), "train.epoch_size=10 is not allowed: expected null or at least train.batch_size=128"),
    (("data.train_size=10",), "data.train_size=10 is not allowed: expected null or at least train.batch_size=128"),
    (("train.lr=0",), "train.lr=0.0 is not allowed: expected a number > 0"),
    (("train.lr=inf",), "train.lr=inf is not allowed"),
    (("train.lr=nan",), "train.lr=nan is not allowed"),
    (("train.min_lr=-1",), "train.min_lr=-1.0 is not allowed"),
    (("train.min_lr=1",), "train.min_lr=1.0 is not allowed: expected a number in [0, train.lr=0.0005]"),
    (("train.warmup_start_lr=-1",), "train.warmup_start_lr=-1.0 is not allowed"),
    (("train.warmup_epochs=-1",), "train.warmup_epochs=-1 is not allowed"),
    (("train.warmup_epochs=13",), "train.warmup_epochs=13 is not allowed: expected a number of epochs in [0, train"),
    (("train.warmup_epochs=true",), "train.warmup_epochs=True is not allowed"),
    (("train.decay=step",), "train.decay='step' is not allowed: expected one of cosine or linear"),
    (("train.weight_decay=-0.1",), "train.weight_decay=-0.1 is not allowed: expected a number >= 0"),
    (("train.weight_decay=inf",), "train.weight_decay=inf is not allowed"),
    (("train.grad_clip=-1",), "train.grad_clip=-1.0 is not allowed: expected null (no clipping) or a number > 0"),
    (("train.grad_clip=0",), "train.grad_clip=0.0 is not allowed"),
    (("train.grad_clip=nan",), "train.grad_clip=nan is not allowed"),
    (("train.precision=fp16",), "train.precision='fp16' is not allowed"),
    (("train.compile=1",), "train.compile=1 is not allowed: expected one of auto, true or false"),
    (("train.cuda_graph=sometimes",), "train.cuda_graph='sometimes' is not allowed"),
    (("train.eval_batch_size=0",), "train.eval_batch_size=0 is not allowed: expected an integer >= 1"),
    (("train.log_every=0",), "train.log_every=0 is not allowed: expected an integer >= 1"),
    (("train.checkpoint_every_min=-1",), "train.checkpoint_every_min=-1.0 is not allowed"),
    (("train.checkpoint_every_min=nan",), "train.checkpoint_every_min=nan is not allowed"),
    (("train.augment.mixup_alpha=-1",), "train.augment.mixup_alpha=-1.0 is not allowed"),
    (("train.augment.randaugment.n=0",), "train.augment.randaugment.n=0 is not allowed"),
    (("train.augment.randaugment.m=31",), "train.augment.randaugment.m=31 is not allowed"),
    (("vcon.shape=zigzag",), "vcon.shape='zigzag' is not allowed"),
    (("vcon.epochs=-1",), "vcon.epochs=-1 is not allowed"),
    (("vcon.epochs=true",), "vcon.epochs=True is not allowed"),
    (("vcon.epochs=inf",), "vcon.epochs=inf is not allowed"),
    (("vcon.steps=-1",), "vcon.steps=-1 is not allowed"),
    (("schedule=exp", "vcon.rate=0"), "vcon.rate=0.0 is not allowed"),
    (("schedule=step", "vcon.stages=0"), "vcon.stages=0 is not allowed"),
    (("model.name=",), "model.name='' is not allowed"),
    (("model.source=hub",), "model.source='hub' is not allowed: expected one of pretrained or scratch"),
    (("model.pretrained=null",), "model.pretrained=None is not allowed"),
    (("model.pretrained=3",), "model.pretrained=3 is not allowed"),
    (("model.mean=[a]",), "model.mean=['a'] is not allowed"),
    (("model.std=[0]",), "model.std=[0] is not allowed"),
    (("model=vit-micro-scratch", "model.config=3"), "model.config=3 is not allowed"),
    ((*GLUE, "model.inputs=audio"), "model.inputs='audio' is not allowed: expected one of image or text"),
    ((*GLUE, "model.max_positions=0"), "model.max_positions=0 is not allowed"),
    ((*GLUE, "model.tokenizer=3"), "model.tokenizer=3 is not allowed"),
    (("data.name=mnist",), "data.name='mnist' is not allowed: expected one of cifar10, cifar100, fashion-mnist"),
    (("data.val_size=0",), "data.val_size=0 is not allowed: expected an integer >= 1"),
    (("data.split_seed=abc",), "data.split_seed='abc' is not allowed"),
    (("data.train_size=-1",), "data.train_size=-1 is not allowed"),
    (("data.test_size=0",), "data.test_size=0 is not allowed"),
    (("data.root=3",), "data.root=3 is not allowed"),
    (("data.hub_id=null",), "data.hub_id=None is not allowed"),
    (("data.image_key=3",), "data.image_key=3 is not allowed"),
    ((*IMAGEFOLDER, "data.stream=no"), "data.stream='no' is not allowed: expected one of auto, true or false"),
    ((*IMAGEFOLDER, "data.stream=2"), "data.stream=2 is not allowed"),
    ((*IMAGEFOLDER, "data.workers=-1"), "data.workers=-1 is not allowed: expected an integer >= 0"),
    ((*IMAGEFOLDER, "data.bad_images=ignore"), "data.bad_images='ignore' is not allowed: expected one of stop or skip"),
    ((*IMAGEFOLDER, "data.image_size=0"), "data.image_size=0 is not allowed"),
    ((*IMAGENET, "data.image_size=-1"), "data.image_size=-1 is not allowed"),
    ((*IMAGENET, "data.workers=1.5"), "data.workers=1.5 is not allowed"),
    ((*IMAGENET, "data.test_split=3"), "data.test_split=3 is not allowed"),
    ((*GLUE, "data.task=sst5"), "data.task='sst5' is not allowed: expected one of cola"),
    ((*GLUE, "data.max_length=0"), "data.max_length=0 is not allowed"),
    ((*GLUE, "data.max_length=129"), "data.max_length=129 is not allowed: expected an integer in [1, 128]"),
    ((*GLUE, "data.group_by_length=maybe"), "data.group_by_length='maybe' is not allowed: expected true or false"),
    ((*ROTTEN, "data.group_by_length=no"), "data.group_by_length='no' is not allowed"),
    ((*ROTTEN, "data.package=3"), "data.package=3 is not allowed"),
    ((*TEXT_FILES, "data.text_columns=[a,b,c]"), "data.text_columns=['a', 'b', 'c'] is not allowed"),
    ((*TEXT_FILES, "data.text_columns=text"), "data.text_columns='text' is not allowed"),
    ((*TEXT_FILES, "data.label_column=3"), "data.label_column=3 is not allowed"),
    (("compression.name=zip",), "compression.name='zip' is not allowed: expected one of chain, lrd, none"),
    (("compression.ratio=nan",), "compression.ratio=nan is not allowed: expected a fraction in [0, 1)"),
    (("compression.granularity=4:2",), "compression.granularity='4:2' is not allowed"),
    (("compression=lrd", "compression.rank=true"), "compression.rank=True is not allowed"),
    (("compression=lrd", "compression.rank=1.5"), "compression.rank=1.5 is not allowed"),
    (("compression=quant", "compression.bits=true"), "compression.bits=True is not allowed"),
    (("compression=quant", "compression.bits=9"), "compression.bits=9 is not allowed"),
    (("compression=prune-quant", "compression.steps=3"), "compression.steps=3 is not allowed: expected a list"),
    (("compression=prune-quant", "compression.steps.0.ratio=2"), "compression.steps.0.ratio=2 is not allowed"),
    (("compression=prune-quant", "compression.steps.1.name=zip"), "compression.steps.1.name='zip' is not allowed"),
    (("method.name=fast",), "method.name='fast' is not allowed: expected one of gradual or vcon"),
    (("method=gradual", "method.svd_every=true"), "method.svd_every=True is not allowed"),
]
UNKNOWN = [
    (("+data.foo=1",), "data=fashion-mnist has no setting(s) ['foo']; allowed: ['hub_id', 'image_key'"),
    (("+data.stream=true",), "data=fashion-mnist has no setting(s) ['stream']"),  # only folders stream
    (("+model.foo=1",), "model=vit-micro has no setting(s) ['foo']; allowed: ['config', 'inputs', 'mean'"),
    (("+compression.amount=0.5",), "compression=prune has no setting(s) ['amount']; allowed: ['granularity'"),
    (("compression=prune-quant", "+compression.steps.1.ratio=0.5"),
     "compression.steps.1=quant has no setting(s) ['ratio']; allowed: ['bits', 'name']"),
    (("+method.svd_every=3",), "method=vcon has no setting(s) ['svd_every']; allowed: ['name']"),
    (("data=imagefolder",), "data.path is not set: expected a folder"),  # left at ??? in conf/data/imagefolder.yaml
]


@pytest.mark.parametrize("overrides, message", BAD + UNKNOWN, ids=lambda x: " ".join(x) if isinstance(x, tuple)
                         else None)
def test_a_bad_value_is_refused_naming_its_key(overrides, message):
    with pytest.raises(ConfigError) as refused:
        job.check(make_config(*overrides))
    assert str(refused.value).startswith(message), str(refused.value)
    assert "\n" not in str(refused.value)


def test_every_key_of_every_option_is_declared_and_the_options_pass():
    """The composed default and every option of every group pass validate(); every field of every schema declares
    what it allows (a setting), or is a section or a group's option."""
    from omegaconf import OmegaConf

    from vcon import data, method, model
    from vcon.app import config
    from vcon.compression import REGISTRY

    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name != "hydra"):
        for option in sorted(group.glob("*.yaml")):
            extra = ["data.path=/tmp"] if option.stem in ("imagefolder", "text-files") else []
            config.validate(make_config(f"{group.name}={option.stem}", *extra))
    schemas = [config.Config, config.ExpScheduleConfig, config.StepScheduleConfig, *REGISTRY.values(),
               *method.METHODS.values(), *(k.schema for k in model.INPUTS.values()),
               *(loader.schema for loader in data.LOADERS.values())]
    for schema in schemas:
        for f in dataclasses.fields(schema):
            section = dataclasses.is_dataclass(f.default_factory)
            assert section or "allowed" in f.metadata or "options" in f.metadata, (schema.__name__, f.name)
            if section:
                schemas.append(f.default_factory)
    assert OmegaConf.get_type(make_config().model) is dict  # untyped for OmegaConf: the values keep their types


def test_the_library_checks_its_own_fields_alike():
    from vcon import LowRank, Prune, Quant
    from vcon.method import Gradual

    for bad, message in [(lambda: Prune(ratio=True), "compression.ratio=True"),
                         (lambda: LowRank(rank=True), "compression.rank=True"),
                         (lambda: Quant(bits=True), "compression.bits=True"),
                         (lambda: Gradual(svd_every=True), "method.svd_every=True")]:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.") + " is not allowed"):
            bad()
    assert LowRank(rank=0.25).rank == 0.25 and Prune(ratio=0).ratio == 0 and Prune(granularity="2:4", ratio=0.5).group


def test_run_py_refuses_a_negative_grad_clip_in_one_line_without_loading_anything(tmp_path):
    """The check path imports neither transformers nor datasets, and the run ends with the one line."""
    code = f"""
import sys
sys.argv = ["run.py", "train.grad_clip=-1", "outputs={tmp_path}"]
import runpy
try:
    runpy.run_path("run.py", run_name="__main__")
except SystemExit as stop:
    heavy = sorted(m for m in ("transformers", "datasets") if m in sys.modules)
    print("exit", stop.code, "heavy", heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "exit 2 heavy []", done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == ("vcon: error: train.grad_clip=-1.0 is not allowed: expected "
                                                     "null (no clipping) or a number > 0")
    assert "Traceback" not in done.stderr
