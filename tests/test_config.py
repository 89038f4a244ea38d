"""Every option of every config group composes through Hydra, and passes the run's own checks."""
import pytest
from conftest import CONF, make_config

from vcon.app import job

GROUPS = {group.name: sorted(p.stem for p in group.glob("*.yaml")) for group in CONF.iterdir()
          if group.is_dir() and group.name != "hydra"}  # conf/hydra/ holds options of Hydra's own groups
OPTIONS = [(group, option) for group, options in sorted(GROUPS.items()) for option in options]


def test_the_tree_mirrors_the_code():
    from conftest import ROOT

    assert set(GROUPS) == {"model", "data", "compression", "schedule", "method", "distill", "train", "experiment"}
    for group in ("model", "data", "compression", "method", "train"):  # a folder of the group's name, registry first
        assert (ROOT / "vcon" / group / "__init__.py").exists()
    for group in ("schedule", "distill"):  # one small module each: the shapes of β; the teacher
        assert (ROOT / "vcon" / f"{group}.py").exists()


@pytest.mark.parametrize("group, option", OPTIONS)
def test_option_composes_and_checks(config, group, option):
    from vcon import data, model

    extra = ["data.path=/tmp"] if option in ("imagefolder", "imagenet", "text-files") else []
    cfg = config(f"{group}={option}", *extra)
    if model.inputs(cfg.model) == "text" or data.inputs(cfg.data) == "text":  # with a partner that takes text
        cfg = config(f"{group}={option}", *extra, "data=rotten-tomatoes" if group == "model" else "model=bert-micro")
    if group == "schedule":
        assert cfg.vcon.shape == option
    elif group in ("model", "data"):
        assert cfg[group].name == option
    elif group == "compression":
        named = {"prune-quant": "chain"} | {o: "recipe" for o in GROUPS["compression"] if o.startswith("recipe-")}
        assert cfg.compression.name == named.get(option, option)
    elif group == "method":
        assert cfg.method.name == option
    elif group == "distill":
        assert (cfg.distill.alpha > 0) == (option != "none")
    if option in ("imagefolder", "imagenet", "text-files"):
        return  # data.path must hold a real folder: tested in test_run, test_stream and test_text
    compression, method = job.check(cfg)
    assert (compression.name, method.name) == (cfg.compression.name, cfg.method.name)


def test_default_run_is_vit_micro_pruned_on_fashion_mnist(config):
    cfg = config()
    assert (cfg.model.name, cfg.data.name, cfg.compression.name, cfg.vcon.shape) == (
        "vit-micro", "fashion-mnist", "prune", "linear")
    assert cfg.model.pretrained.endswith("vcon/model/assets/vit-micro")


@pytest.mark.parametrize("model", ["vit-tiny", "vit-small", "vit-base"])
def test_hub_vits_default_to_the_paper_recipe(config, model):
    t = config(f"model={model}").train
    assert (t.lr, t.weight_decay, t.warmup_epochs, t.warmup_start_lr, t.min_lr, t.batch_size, t.epochs) == (
        1e-4, 0.0, 1, 1e-5, 1e-6, 128, 60)
    assert t.augment.randaugment.enabled and t.augment.mixup_alpha == 1.0
    assert config(f"model={model}", "train=micro").train.epochs != 60  # still the user's choice


def test_paper_preset(config):
    cfg = config("experiment=paper-vit-tiny")
    assert (cfg.model.pretrained, cfg.data.name, cfg.compression.name, cfg.compression.ratio, cfg.vcon.epochs,
            cfg.train.epochs) == ("WinKawaks/vit-tiny-patch16-224", "cifar10", "prune", 0.9, 12, 60)


def test_command_line_values_reach_the_run(config):
    cfg = config("compression=lrd", "compression.rank=16", "vcon.epochs=12", "schedule=cosine")
    assert (cfg.compression.rank, cfg.vcon.epochs, cfg.vcon.shape) == (16, 12, "cosine")
    assert config("compression=prune", "compression.granularity=2:4").compression.granularity == "2:4"


def test_a_run_is_the_same_run_from_another_clone(tmp_path):
    """The run identity names a shipped model by name: cloned elsewhere (another absolute path to the asset), the
    same settings are the same run, so a sweep resumes and vcon-export accepts its checkpoints. A model folder of
    the user's own stays a path."""
    from vcon.app import identity

    shipped = make_config()
    assert identity.identity(shipped)["model"]["pretrained"] == "asset:vit-micro"
    own = make_config(f"model.pretrained={tmp_path / 'my-vit'}")
    assert identity.identity(own)["model"]["pretrained"] == str(tmp_path / "my-vit")
    assert identity.run_id(shipped) != identity.run_id(own)
    scratch = make_config("model=bert-micro-scratch", "data=rotten-tomatoes")  # its tokenizer is a shipped folder
    assert identity.identity(scratch)["model"]["tokenizer"] == "asset:bert-micro"


# --- vcon.app.config: no Hydra side effects at import; types checked by the schemas; run ids unchanged by them ---------

SWEEP_FILES = sorted((CONF.parent / "sweeps").glob("*.yaml"))
BLOCK_HYDRA = """
import sys

class Block:  # the runtime of an exported model: torch and transformers, without Hydra or OmegaConf
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("omegaconf", "hydra"):
            raise ImportError(f"blocked: {name}")

sys.meta_path.insert(0, Block())
"""
CHECK_IMPORT = """
import vcon

assert vcon.__version__
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("omegaconf", "hydra"))
assert not loaded, loaded
"""


@pytest.mark.parametrize("blocked", [False, True])
def test_import_vcon_has_no_hydra_side_effects(blocked):
    import subprocess
    import sys

    from conftest import ROOT

    code = (BLOCK_HYDRA if blocked else "import sys\n") + CHECK_IMPORT
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_import_vcon_registers_nothing():
    """The resolvers, the schemas and the sweeps come from vcon.app.config.register(), not from importing vcon."""
    import subprocess
    import sys

    from conftest import ROOT

    code = """
import vcon
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

assert not OmegaConf.has_resolver("asset") and not OmegaConf.has_resolver("run_id")
assert "schema.yaml" not in ConfigStore.instance().list("") and "sweeps" not in ConfigStore.instance().list("")
from vcon.app import config
config.register()
config.register()  # idempotent
assert OmegaConf.has_resolver("asset") and OmegaConf.has_resolver("run_id")
assert {"schema.yaml", "sweeps"} <= set(ConfigStore.instance().list(""))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_schema_types_the_config(config):
    from omegaconf import OmegaConf

    from vcon.app.config import Config, ExpScheduleConfig, ScheduleConfig, StepScheduleConfig, TrainConfig

    cfg = config()
    assert OmegaConf.get_type(cfg) is Config and OmegaConf.get_type(cfg.train) is TrainConfig
    assert OmegaConf.get_type(cfg.vcon) is ScheduleConfig
    assert OmegaConf.get_type(config("schedule=exp").vcon) is ExpScheduleConfig
    assert OmegaConf.get_type(config("schedule=step").vcon) is StepScheduleConfig
    assert config("schedule=linear").vcon.keys() == {"shape", "epochs", "steps"}  # no rate: null, stages: null
    assert OmegaConf.get_type(cfg.model) is dict and OmegaConf.get_type(cfg.compression) is dict  # untyped
    assert config("compression=lrd", "compression.rank=0.25").compression.rank == 0.25  # an int or a fraction


@pytest.mark.parametrize("overrides, key, value", [
    (["train.lr=abc"], "train.lr", "abc"),
    (["seed=abc"], "seed", "abc"),
    (["train.epochs=two"], "train.epochs", "two"),
    (["train.batch_size=1.5"], "train.batch_size", "1.5"),
    (["train.epoch_size=all"], "train.epoch_size", "all"),
    (["train.grad_clip=big"], "train.grad_clip", "big"),
    (["train.augment.mixup_alpha=x"], "train.augment.mixup_alpha", "x"),
    (["train.augment.randaugment.enabled=maybe"], "train.augment.randaugment.enabled", "maybe"),
    (["train.augment.randaugment.n=two"], "train.augment.randaugment.n", "two"),
    (["save_pretrained=maybe"], "save_pretrained", "maybe"),
    (["vcon.steps=1.5"], "vcon.steps", "1.5"),
    (["schedule=exp", "vcon.rate=fast"], "vcon.rate", "fast"),
    (["schedule=step", "vcon.stages=four"], "vcon.stages", "four"),
    (["target.include=3"], "target.include", "3"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(config, overrides, key, value):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as refused:
        config(*overrides)
    assert f"{key}={value}" in str(refused.value)
    assert f"full_key: {key}" in str(refused.value.__cause__)


@pytest.fixture
def untyped():
    """Compose without the schemas (what conf/ gave before they existed): empty configs in their place."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from vcon.app import config as vcon_config

    def compose_untyped(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    vcon_config.register()
    for name, (_, package) in vcon_config.SCHEMAS.items():
        ConfigStore.instance().store(name=name, node={}, package=package)
    try:
        yield compose_untyped
    finally:
        vcon_config.register()


def sweep_jobs(path):
    """Every job's overrides of a ready sweep: +sweeps=<name> and one value of each of its swept keys."""
    import itertools

    from omegaconf import OmegaConf

    params = OmegaConf.load(path).hydra.sweeper.params
    values = [[f"{key}={v}" for v in str(choices).split(",")] for key, choices in params.items()]
    return [[f"+sweeps={path.stem}", *job] for job in itertools.product(*values)]


IDENTITY_CASES = [[], ["schedule=cosine", "vcon.steps=500"], ["vcon.epochs=1.5"], ["train.warmup_epochs=0.5"],
                  ["compression=lrd", "compression.rank=0.25"], ["compression=prune", "compression.granularity=2:4"],
                  *([f"{group}={option}"] for group, option in OPTIONS if group != "data"),
                  *(sweep_jobs(path)[-1] for path in SWEEP_FILES)]


def test_the_schemas_change_no_run_identity(untyped):
    """The run id hashes the resolved config: the typed config must give the same values, of the same types, as the
    yaml alone (json tells 3 from 3.0), or every earlier run would be trained again in a new folder."""
    import json

    from omegaconf import OmegaConf

    from vcon.app import identity

    assert OmegaConf.get_type(untyped()) is dict and OmegaConf.get_type(untyped().train) is dict
    before = {" ".join(case): untyped(*case) for case in IDENTITY_CASES}
    before = {case: (identity.run_id(cfg), json.dumps(identity.identity(cfg), sort_keys=True))
              for case, cfg in before.items()}
    from vcon.app import config as vcon_config

    vcon_config.register()
    for case, (run_id, ident) in before.items():
        cfg = make_config(*case.split())
        assert (identity.run_id(cfg), json.dumps(identity.identity(cfg), sort_keys=True)) == (run_id, ident), case


@pytest.mark.parametrize("overrides", [[], ["train=paper"], ["experiment=paper-vit-tiny"], ["schedule=exp"],
                                       ["schedule=step"], ["experiment=train-vit-micro"]])
def test_integers_stay_integers_in_the_identity(config, overrides):
    from vcon.app import identity

    ident = identity.identity(config(*overrides))
    t = ident["train"]
    for key in ("epochs", "batch_size", "grad_accum", "warmup_epochs"):
        assert type(t[key]) is int, key
    assert t["epoch_size"] is None or type(t["epoch_size"]) is int
    assert type(t["augment"]["randaugment"]["n"]) is int and type(ident["seed"]) is int
    if "vcon" in ident:
        assert type(ident["vcon"]["epochs"]) is int
        if "stages" in ident["vcon"]:
            assert type(ident["vcon"]["stages"]) is int
    assert type(t["lr"]) is float and type(t["weight_decay"]) is float  # floats in the yaml, floats still
    assert type(config(*overrides, "vcon.epochs=1.5").vcon.epochs) is float  # a fraction of an epoch stays one


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_job_of_every_ready_sweep_composes_and_checks(path):
    from omegaconf import OmegaConf

    named = OmegaConf.load(path).sweep_name  # fixed (two files may fill one sweep): launched again, a sweep skips
    assert path.stem.startswith(named)  # its finished runs
    for overrides in sweep_jobs(path):
        cfg = make_config(*overrides)
        assert cfg.sweep_name == named
        job.check(cfg)


# --- run.py: a bad value is one message, not a traceback; a refused run leaves no folder --------------------------

@pytest.mark.parametrize("override", ["train.lr=abc", "seed=abc", "train.epochs=two"])
def test_run_py_refuses_a_value_of_the_wrong_type_naming_key_and_value(tmp_path, override):
    from conftest import run_py

    done = run_py(override, f"outputs={tmp_path}", timeout=120)
    assert done.returncode != 0
    assert f"Error merging override {override}" in done.stderr and f"full_key: {override.split('=')[0]}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.iterdir())  # refused while composing: Hydra made no folder


def test_run_py_refuses_a_batch_size_of_zero(tmp_path):
    from conftest import run_py

    done = run_py("train.batch_size=0", f"outputs={tmp_path}", timeout=120)
    assert done.returncode == 2
    assert "train.batch_size=0 is not allowed: expected" in done.stderr and "Traceback" not in done.stderr
    assert not list((tmp_path / "runs").iterdir())


def test_a_refused_run_leaves_no_folder(tmp_path):
    from conftest import run_py

    done = run_py("compression.ratio=2", f"outputs={tmp_path}", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("vcon: error: compression.ratio=2 is not allowed: expected a "
                                                     "fraction in [0, 1)")
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "runs").iterdir())  # Hydra made it before main() ran; run.py removed it


@pytest.mark.parametrize("earlier", ["checkpoint.pt", "results.json", "tb/events.out", "notes.txt"])
def test_a_refused_run_leaves_a_folder_of_an_earlier_run_alone(tmp_path, earlier):
    """The same identity as an earlier run (a resume) whose folder holds more than Hydra's files: refused, untouched."""
    from conftest import run_py

    from vcon.app import identity

    run_dir = tmp_path / "runs" / identity.run_id(make_config("compression.ratio=2"))
    (run_dir / earlier).parent.mkdir(parents=True)
    (run_dir / earlier).write_bytes(b"an earlier run's")
    (run_dir / "run.log").write_text("the earlier run's log\n")
    done = run_py("compression.ratio=2", f"outputs={tmp_path}", timeout=120)
    assert done.returncode == 2 and "compression.ratio=2 is not allowed" in done.stderr
    assert (run_dir / earlier).read_bytes() == b"an earlier run's"
    assert (run_dir / "run.log").read_text().startswith("the earlier run's log\n")


def test_only_a_folder_of_hydras_own_files_is_discarded(tmp_path):
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("run_py_module", ROOT / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    fresh = tmp_path / "fresh"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (fresh / "run.log").write_text("")
    (fresh / ".lock").write_text("")
    run._discard_if_empty(fresh)
    assert not fresh.exists()
    for name in ("checkpoint.pt", "results.json", "tb", "wandb", "error.json"):
        kept = tmp_path / name / "run"
        (kept / ".hydra").mkdir(parents=True)
        if name in ("tb", "wandb"):
            (kept / name).mkdir()
        else:
            (kept / name).write_text("")
        run._discard_if_empty(kept)
        assert (kept / name).exists() and (kept / ".hydra").is_dir()
    run._discard_if_empty(tmp_path / "no-such-folder")  # nothing to do, no error


def test_a_refused_job_of_a_sweep_records_its_error_in_its_folder(tmp_path):
    import json

    from conftest import run_py

    done = run_py("-m", "compression.ratio=2", f"outputs={tmp_path}", "sweep_name=refused", timeout=120)
    assert done.returncode == 1  # the sweep's status: a job failed
    (error,) = (tmp_path / "sweeps" / "refused").glob("*/error.json")
    assert "compression.ratio=2 is not allowed" in json.loads(error.read_text())["error"]
