"""vcon as pip installs it from a wheel, away from the checkout: the config tree and the ready sweeps travel inside
the package (vcon/_conf, vcon/_sweeps), so that ``+sweeps=`` composes and vcon-report / vcon-export read a saved run."""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import QUICK, ROOT, make_config, requires_fashion_mnist
from omegaconf import OmegaConf

from vcon.app import job

SOURCES = ("vcon", "conf", "sweeps", "pyproject.toml", "README.md")  # what setuptools reads to build the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel pip builds from a copy of the checkout (a build writes build/ and vcon.egg-info into the tree it
    builds, and a stale build/ would put files the checkout no longer has into the wheel)."""
    tmp = tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        source, copy = ROOT / name, tmp / "src" / name
        if source.is_dir():
            shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, copy)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    done = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                           str(tmp / "src")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (built,) = (tmp / "dist").glob("vcon-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed into a folder of its own, with its console scripts in bin/."""
    target = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "pip", "-q", "--disable-pip-version-check", "install", "--no-deps",
                           "--no-index", "--target", str(target), str(wheel)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return target


def from_install(target, *command, cwd):
    """A command run from outside the checkout, with the installed copy of vcon first on the path."""
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(target)})


def test_the_wheel_holds_the_package_the_config_tree_and_the_sweeps(wheel):
    def files(folder, pattern, inside):
        return {f"{inside}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).glob(pattern)
                if p.is_file() and "__pycache__" not in p.parts}

    expected = (files("vcon", "**/*.py", "vcon") | files("vcon/model/assets", "**/*", "vcon/model/assets")
                | files("conf", "**/*.yaml", "vcon/_conf") | files("sweeps", "*.yaml", "vcon/_sweeps"))
    assert {"vcon/_conf/config.yaml", "vcon/_sweeps/paper-table-micro.yaml", "vcon/compression/prune.py"} <= expected
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not expected - names, sorted(expected - names)


def test_an_installed_vcon_composes_the_ready_sweeps(installed, tmp_path):
    code = """if True:
        import json, sys
        from hydra import compose, initialize_config_dir
        import vcon
        from vcon import shipped
        from vcon.app import config

        config.register()
        with initialize_config_dir(config_dir=sys.argv[1], version_base=None):
            cfg = compose(config_name="config", overrides=["+sweeps=paper-table-micro"], return_hydra_config=True)
        print(json.dumps({"vcon": vcon.__file__, "conf": str(shipped.CONF), "sweep_name": cfg.sweep_name,
                          "seeds": cfg.hydra.sweeper.params.seed, "model": cfg.model.pretrained}))
    """
    conf = installed / "vcon" / "_conf"  # where the wheel puts conf/
    done = from_install(installed, sys.executable, "-c", code, str(conf), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["vcon"] == str(installed / "vcon" / "__init__.py")  # the installed copy, not the checkout
    assert seen["conf"] == str(conf)
    assert (seen["sweep_name"], seen["seeds"]) == ("paper-table-micro", "0,1,2")
    assert seen["model"] == str(installed / "vcon" / "model" / "assets" / "vit-micro")


@pytest.mark.slow  # a run, then vcon-report and vcon-export each start anew: a minute on a busy machine
@requires_fashion_mnist
def test_an_installed_vcon_reports_and_exports_a_saved_run(installed, tmp_path):
    run_dir = tmp_path / "run"  # a finished run at β = 0 (2 optimizer steps), as Hydra leaves it
    cfg = make_config(*QUICK, "data.train_size=128", "data.val_size=64", "data.test_size=128", "train.epochs=1")
    job.run(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    report = from_install(installed, str(installed / "bin" / "vcon-report"), str(run_dir), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "| vit-micro | fashion-mnist |" in (run_dir / "report" / "report.md").read_text()
    export = from_install(installed, str(installed / "bin" / "vcon-export"), str(run_dir), "--out",
                          str(tmp_path / "export"), "--timing-s", "0", cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-3000:]
    figures = json.loads((tmp_path / "export" / "export.json").read_text())
    assert figures["storage"] == {"elias-fano+fp32": 24}
