"""Faults met as a user meets them: a damaged checkpoint, a full disk, a diverging run, a planted checkpoint, a foreign
export; each ends in a message and a non-zero exit, loses nothing, and the same command goes on afterwards."""
import contextlib
import importlib.util
import json
import logging
import os
import pickle
import shutil
import subprocess

import pytest
import torch
from conftest import CONF, ROOT, make_config, requires_fashion_mnist, run_py
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from vcon import atomic, export
from vcon.app import export_run, job
from vcon.errors import CheckpointError, DiskFull, ExportError
from vcon.train import checkpoint

pytestmark = requires_fashion_mnist
# two optimizer steps an epoch of the shipped vit-micro on 128 images: a launch of run.py is mostly its start
TINY = ["data.train_size=128", "data.val_size=64", "data.test_size=128", "train.batch_size=64", "train.epochs=2",
        "vcon.epochs=1", "tracking.wandb.mode=disabled"]


def assert_said(done, *parts):
    """Refused in plain words: a non-zero exit, every part in the last line of stderr, no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert all(part in last for part in parts), last
    assert "Traceback" not in done.stderr


def epoch_of(path):
    return checkpoint.read(path)["progress"]["epoch"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of run.py (its .hydra folder included), two epochs: checkpoint.pt and the one before it."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    done = run_py(*TINY, f"hydra.run.dir={run_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def copy_of(run_dir, tmp_path):
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run"


def cut_in_half(path):
    os.truncate(path, path.stat().st_size // 2)


def test_the_last_two_checkpoints_are_kept(finished):
    assert (epoch_of(finished / checkpoint.FILENAME), epoch_of(finished / checkpoint.PREVIOUS)) == (2, 1)


def test_a_damaged_checkpoint_is_moved_aside_and_the_run_resumes_from_the_one_before(finished, tmp_path, caplog):
    run_dir = copy_of(finished, tmp_path)
    cut_in_half(run_dir / checkpoint.FILENAME)
    damaged = (run_dir / checkpoint.FILENAME).read_bytes()
    with caplog.at_level(logging.WARNING, "vcon"):
        resumed = job.run(make_config(*TINY), run_dir)  # the same settings as run.py's: the same run
    assert f"{run_dir / checkpoint.FILENAME} is damaged or cut short" in caplog.text
    assert (run_dir / "checkpoint.pt.damaged").read_bytes() == damaged  # kept for a look, never deleted
    assert [h["epoch"] for h in resumed["history"]] == [1, 2] and resumed["step"] == 4  # epoch 2 trained again
    first = json.loads((finished / "results.json").read_text())["history"]
    same = ("step", "beta", "loss", "val_acc_compressed")  # the same run, bar the speeds
    assert [h[k] for h in resumed["history"] for k in same] == pytest.approx([h[k] for h in first for k in same])
    assert epoch_of(run_dir / checkpoint.FILENAME) == 2


def test_with_no_intact_checkpoint_run_py_names_them_and_keeps_them(finished, tmp_path):
    run_dir = copy_of(finished, tmp_path)
    for name in (checkpoint.FILENAME, checkpoint.PREVIOUS):
        cut_in_half(run_dir / name)
    before = {p.name: p.read_bytes() for p in run_dir.glob("checkpoint*")}
    done = run_py(*TINY, f"hydra.run.dir={run_dir}", timeout=120)
    assert_said(done, f"{run_dir / checkpoint.FILENAME} is damaged", f"{run_dir / checkpoint.PREVIOUS} is damaged",
                "to start afresh, move", "hydra.run.dir=")
    assert {p.name: p.read_bytes() for p in run_dir.glob("checkpoint*")} == before


class Planted:
    """What a stranger's checkpoint.pt could hold: unpickled by torch.load(weights_only=False), it runs a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("write", [torch.save, lambda obj, path: path.write_bytes(pickle.dumps(obj))],
                         ids=["torch.save", "pickle"])
def test_a_planted_checkpoint_runs_nothing_in_run_py_or_vcon_export(finished, tmp_path, capsys, write):
    run_dir = copy_of(finished, tmp_path)
    marker = tmp_path / "marker"
    write({"identity": {}, "model": Planted(marker)}, run_dir / checkpoint.FILENAME)
    done = run_py(*TINY, f"hydra.run.dir={run_dir}", timeout=120)  # the same settings: it would resume this file
    assert_said(done, f"{run_dir / checkpoint.FILENAME} is not a vcon checkpoint or was written by something else",
                "nothing in it was run")
    assert export_run.main([str(run_dir), "--out", str(tmp_path / "export")]) == 2
    err = capsys.readouterr().err
    assert "vcon-export: error:" in err and "is not a vcon checkpoint or was written by something else" in err
    assert not marker.exists() and not (tmp_path / "export").exists()
    print(f"\nrun.py: {done.stderr.strip().splitlines()[-1]}\nvcon-export: {err.strip()}\nmarker exists: "
          f"{marker.exists()}")


def test_a_checkpoint_written_as_before_still_loads(tmp_path):
    """Written the way checkpoints were before weights-only loading: plain torch.save of the whole state, numpy's RNG
    state and all; read back equal."""
    from vcon.train import distributed

    state = {"identity": {"seed": 0}, "progress": {"epoch": 1, "history": [{"loss": 0.5}]}, "finished": False,
             "controller": {"step": 3, "beta": 0.25}, "model": torch.nn.Linear(3, 2).state_dict(),
             "optimizer": torch.optim.AdamW(torch.nn.Linear(3, 2).parameters()).state_dict(),
             "rng": distributed.gather(checkpoint.rng_state(), distributed.SINGLE)}
    with open(tmp_path / checkpoint.FILENAME, "wb") as f:
        torch.save(state, f)
    loaded = checkpoint.load(tmp_path)
    assert loaded["progress"] == state["progress"] and loaded["controller"] == state["controller"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in state["model"].items())
    checkpoint.set_rng_state(loaded["rng"][0])
    mine, saved = checkpoint.rng_state(), state["rng"][0]
    assert mine["python"] == saved["python"] and (mine["numpy"][1] == saved["numpy"][1]).all()


@contextlib.contextmanager
def small_disk(folder, size):
    """A tmpfs of ``size`` at ``folder`` (root only), unmounted at the end whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_a_full_disk_mid_run_keeps_the_checkpoint_and_the_same_command_resumes(tmp_path):
    """Room for two checkpoints and not a third: the third save fails (each is written beside the last two)."""
    with small_disk(tmp_path / "disk", "6m") as disk:
        args = [*TINY, "train.epochs=3", "vcon.epochs=2", f"hydra.run.dir={disk / 'run'}"]
        done = run_py(*args)
        assert_said(done, f"the disk is full: {disk / 'run' / checkpoint.FILENAME} could not be written",
                    f"bytes free in {disk / 'run'}", "the previous checkpoint.pt is kept as it was",
                    "run the same command again")
        assert epoch_of(disk / "run" / checkpoint.FILENAME) == 2 and epoch_of(disk / "run" / checkpoint.PREVIOUS) == 1
        assert not list((disk / "run").glob(".*.tmp")) and not (disk / "run" / "results.json").exists()
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        again = run_py(*args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"resumed {disk / 'run'} at epoch 2, batch 0, step 4" in again.stdout + again.stderr
        assert [h["epoch"] for h in json.loads((disk / "run" / "results.json").read_text())["history"]] == [1, 2, 3]


def test_a_full_disk_keeps_the_previous_results_and_leaves_no_temporary_file(tmp_path):
    with small_disk(tmp_path / "disk", "64k") as disk:
        atomic.write_atomic(disk / "results.json", "the earlier results")
        with pytest.raises(DiskFull, match=r"results.json could not be written \(0 bytes free in .*the previous "
                                           r"results.json is kept as it was"):
            atomic.write_atomic(disk / "results.json", "x" * 200_000)
        assert (disk / "results.json").read_text() == "the earlier results"
        assert [p.name for p in disk.iterdir()] == ["results.json"]


def test_a_full_disk_during_vcon_export_leaves_no_export(finished, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "64k") as disk:
        assert export_run.main([str(finished), "--out", str(disk / "export"), "--timing-s", "0"]) == 2
        err = capsys.readouterr().err
        assert f"vcon-export: error: the disk is full: the export {disk / 'export'} could not be written" in err
        assert not list(disk.iterdir())


def test_a_diverging_run_says_so_and_what_to_try(tmp_path):
    """A checkpoint after every step: the one before the loss went NaN is kept."""
    run_dir = tmp_path / "run"
    done = run_py(*TINY, "train.lr=1e6", "train.warmup_epochs=0", "train.checkpoint_every_min=1e-9",
                  f"hydra.run.dir={run_dir}")
    assert_said(done, "the run diverged: loss is nan at step 2", f"the last checkpoint, {run_dir / 'checkpoint.pt'}, "
                "is kept", "Try a lower train.lr (now 1000000.0) or train.grad_clip=1.0")
    assert checkpoint.load(run_dir)["progress"]["step"] == 1


@pytest.mark.parametrize("model_type, architecture, message", [
    ("vit", "Trainer", "architectures[0]='Trainer': expected a transformers model class"),
    ("vit", "os", "architectures[0]='os'"),
    ("vit", "ViTConfig", "architectures[0]='ViTConfig'"),  # a transformers class, but not a model
    ("vit", None, "architectures[0]=None"),
    ("no-such-type", "ViTForImageClassification", "model_type='no-such-type'"),
])
def test_an_export_naming_anything_but_a_transformers_model_is_refused(tmp_path, model_type, architecture, message):
    config = {"model_type": model_type, "architectures": [architecture], export.KEY: {}}
    (tmp_path / export.CONFIG).write_text(json.dumps(config))
    with pytest.raises(ExportError, match=f"{tmp_path / export.CONFIG} has {message}".replace("[", r"\[")):
        export.load(tmp_path)


def run_main(*overrides, run_dir):
    """run.py's main as Hydra calls it, with a config Hydra composed; returns what main returns to Hydra."""
    spec = importlib.util.spec_from_file_location("run_py_module", ROOT / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return run.main(cfg)


def test_a_sweeper_tunes_on_the_validation_metric_not_the_test_one(tmp_path):
    objective = run_main(*TINY, "train.epochs=1", run_dir=tmp_path)
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["val_acc"] != summary["test_acc"]  # else this test could not tell them apart
    assert objective == summary["val_acc"] == summary["history"][-1]["val_acc_compressed"]


def test_a_foreign_file_in_place_of_a_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.ones(1)}, tmp_path / checkpoint.FILENAME)
    with pytest.raises(CheckpointError, match="is not a vcon checkpoint"):
        checkpoint.load(tmp_path)
