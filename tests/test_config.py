"""Every option of every config group composes through Hydra, and passes the run's own checks."""
import pytest

from conftest import CONF, make_config
from vcon import train

GROUPS = {group.name: sorted(p.stem for p in group.glob("*.yaml")) for group in CONF.iterdir()
          if group.is_dir() and group.name != "hydra"}  # conf/hydra/ holds options of Hydra's own groups
OPTIONS = [(group, option) for group, options in sorted(GROUPS.items()) for option in options]


def test_the_tree_mirrors_the_code():
    from conftest import ROOT

    assert set(GROUPS) == {"model", "data", "compression", "schedule", "train", "experiment"}
    for group in ("model", "data", "schedule", "train"):
        assert (ROOT / "vcon" / f"{group}.py").exists()
    assert (ROOT / "vcon" / "compression").is_dir()


@pytest.mark.parametrize("group, option", OPTIONS)
def test_option_composes_and_checks(config, group, option):
    extra = ["data.path=/tmp"] if option == "imagefolder" else []
    cfg = config(f"{group}={option}", *extra)
    if group == "schedule":
        assert cfg.vcon.shape == option
    elif group in ("model", "data"):
        assert cfg[group].name == option
    elif group == "compression":
        assert cfg.compression.name == ("chain" if option == "prune-quant" else option)
    if option == "imagefolder":
        return  # data.path must hold a real folder: tested in test_run
    compression = train.check(cfg)
    assert compression.name == cfg.compression.name


def test_default_run_is_vit_micro_pruned_on_fashion_mnist(config):
    cfg = config()
    assert (cfg.model.name, cfg.data.name, cfg.compression.name, cfg.vcon.shape) == (
        "vit-micro", "fashion-mnist", "prune", "linear")
    assert cfg.model.pretrained.endswith("vcon/assets/vit-micro")


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
    from vcon import identity

    shipped = make_config()
    assert identity.identity(shipped)["model"]["pretrained"] == "asset:vit-micro"
    own = make_config(f"model.pretrained={tmp_path / 'my-vit'}")
    assert identity.identity(own)["model"]["pretrained"] == str(tmp_path / "my-vit")
    assert identity.run_id(shipped) != identity.run_id(own)
