"""Whole runs: run.py end to end, resume from a checkpoint, figures per compression, and bad input."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import QUICK, ROOT, make_config, make_folder, requires_fashion_mnist, run_py

from vcon import hub
from vcon.app import identity, job, wandb_offline
from vcon.errors import ConfigError
from vcon.train import checkpoint

pytestmark = requires_fashion_mnist


@pytest.mark.slow
def test_run_py_end_to_end(tmp_path):
    """The real entry point, the real config tree, the shipped vit-micro, real Fashion-MNIST."""
    out = tmp_path / "run"
    done = run_py(*QUICK, "vcon.epochs=2", "tracking.wandb.mode=offline", f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["dense_test_acc"] > 80  # the shipped dense model is trained, not random
    assert 0 <= results["test_acc"] <= 100 and results["beta"] == 0.0
    assert results["step"] == results["q_steps"] == 2 * (512 // 64)
    c = results["compression"]
    assert c["layers"] == 24 and c["zero_fraction"] == pytest.approx(0.9, abs=1e-3)
    assert [h["epoch"] for h in results["history"]] == [1, 2]
    assert "val_acc_blended" in results["history"][0]  # β was 0.5 at the end of epoch 1
    assert (out / ".hydra" / "config.yaml").exists() and list((out / "tb").glob("events.out.tfevents.*"))
    state = checkpoint.load(out)
    assert state["progress"]["step"] == results["step"] and state["finished"]
    assert "compressed test accuracy (β = 0)" in done.stdout and f"{results['test_acc']:.2f} %" in done.stdout
    assert "\r" not in done.stdout + done.stderr  # not a terminal (a SLURM log, say): plain lines, no bar redraws
    assert "epoch 2/2  step 16  beta 0.000" in done.stdout + done.stderr

    # W&B, offline: read the run file back and hold it against results.json
    (folder,) = wandb_offline.runs(out)
    logged = wandb_offline.read_run(folder)
    assert logged["summary"]["test_acc"] == results["test_acc"]
    assert logged["summary"]["dense_test_acc"] == results["dense_test_acc"]
    assert logged["summary"]["compression/zero_fraction"] == c["zero_fraction"]
    epochs = [row for row in logged["history"] if "epoch/val_acc_compressed" in row]
    assert [row["epoch/val_acc_compressed"] for row in epochs] == [h["val_acc_compressed"] for h in results["history"]]
    assert [row["_step"] for row in epochs] == [h["step"] for h in results["history"]]
    assert epochs[0]["epoch/val_acc_blended"] == results["history"][0]["val_acc_blended"]
    assert 0 < epochs[0]["epoch/block_gap"] < epochs[1]["epoch/block_gap"] + 1
    betas = [row["vcon/beta"] for row in logged["history"] if "vcon/beta" in row]
    assert betas[0] == pytest.approx(1 - 1 / 16) and betas[-1] == 0 and len(betas) == 16
    assert logged["config"]["compression"]["ratio"] == 0.9 and logged["config"]["seed"] == 0


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *QUICK, f"outputs={tmp_path}"], stdout=secondary,
                          stderr=secondary, timeout=300)
    os.close(secondary)
    screen = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    assert done.returncode == 0
    text = screen.decode(errors="replace")
    assert "\r" in text and re.search(r"epoch 1/2: +\d+%.*\| *\d+/8 .*loss=.*beta=.*img_s=", text), text[-2000:]


def quick(tmp_path, *overrides, on_epoch_end=None):
    cfg = make_config(*QUICK, "model=vit-micro-scratch", *overrides)
    return job.run(cfg, tmp_path, on_epoch_end=on_epoch_end)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``quick`` runs trained once for every test that compares against one or starts from a copy of its folder:
    overrides -> (folder, results). Keyed by run id, so the same run spelled differently is trained once too."""
    runs = {}

    def train_once(*overrides):
        key = identity.run_id(make_config(*QUICK, "model=vit-micro-scratch", *overrides))
        if key not in runs:
            folder = tmp_path_factory.mktemp(key)
            runs[key] = folder, quick(folder, *overrides)
        return runs[key]

    return train_once


class Interrupted(Exception):
    pass


def stop_after(epochs):
    def hook(epoch):
        if epoch == epochs:
            raise Interrupted
    return hook


@pytest.mark.parametrize("overrides", [
    ("compression=prune", "train.epochs=3", "vcon.epochs=2"),  # interrupted during the transition
    ("compression=lrd", "compression.rank=4", "train.epochs=3", "vcon.epochs=1"),  # after originals were dropped
    ("compression=quant", "train.epochs=2", "train.augment.randaugment.enabled=true",  # the paper's augmentation:
     "train.augment.mixup_alpha=1.0"),  # its random draws are replayed exactly on resume
    # a recipe, attention mid-transition and the MLP's originals gone (9 s: slow tier)
    pytest.param(("compression=recipe-attention-binary-mlp-lrd", "compression.groups.mlp.rank=4", "train.epochs=3",
                  "vcon.epochs=1", "+compression.groups.attention.vcon.epochs=2"), marks=pytest.mark.slow),
])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, overrides, trained):
    whole_dir, whole = trained(*overrides)
    with pytest.raises(Interrupted):
        quick(tmp_path / "split", *overrides, on_epoch_end=stop_after(1))
    assert checkpoint.load(tmp_path / "split")["progress"]["epoch"] == 1
    resumed = quick(tmp_path / "split", *overrides)
    assert (resumed["step"], resumed["beta"]) == (whole["step"], whole["beta"])
    assert [h["step"] for h in resumed["history"]] == [h["step"] for h in whole["history"]]
    a, b = checkpoint.load(whole_dir)["model"], checkpoint.load(tmp_path / "split")["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["test_acc"] == pytest.approx(whole["test_acc"], abs=0.2)


def test_a_stop_signal_saves_mid_epoch_and_the_run_resumes_there(tmp_path, trained):
    """SIGUSR2 (what submitit gets before a time limit) after epoch 1: the run saves at the next step boundary, in
    the middle of epoch 2, and leaves; started again, it continues from that step to the same end."""
    overrides = ("compression=prune", "train.epochs=3", "vcon.epochs=2")
    whole_dir, whole = trained(*overrides)
    overrides += ("tracking.wandb.mode=offline",)

    def signal_after_epoch_1(epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGUSR2)

    with pytest.raises(SystemExit) as stopped:
        quick(tmp_path / "split", *overrides, on_epoch_end=signal_after_epoch_1)
    assert stopped.value.code == 128 + signal.SIGUSR2
    saved = checkpoint.load(tmp_path / "split")["progress"]
    assert (saved["epoch"], saved["batch"], saved["step"]) == (1, 1, 512 // 64 + 1)
    assert signal.getsignal(signal.SIGUSR2) == signal.SIG_DFL  # the handler is handed back
    resumed = quick(tmp_path / "split", *overrides)
    assert (resumed["step"], resumed["beta"]) == (whole["step"], whole["beta"])
    a, b = checkpoint.load(whole_dir)["model"], checkpoint.load(tmp_path / "split")["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [h["val_acc_compressed"] for h in resumed["history"]] == pytest.approx(
        [h["val_acc_compressed"] for h in whole["history"]], abs=0.5)
    first, second = wandb_offline.runs(tmp_path / "split")  # the resumed process continued the same W&B run
    assert first.name.rsplit("-", 1)[1] == second.name.rsplit("-", 1)[1]
    assert wandb_offline.read_run(second)["summary"]["test_acc"] == resumed["test_acc"]


def test_finished_run_is_not_trained_again(tmp_path, trained):
    folder, first = trained("train.epochs=1", "vcon.epochs=0")
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    stamp = (tmp_path / "checkpoint.pt").stat().st_mtime_ns
    assert quick(tmp_path, "train.epochs=1", "vcon.epochs=0") == first
    assert (tmp_path / "checkpoint.pt").stat().st_mtime_ns == stamp


def test_checkpoint_of_another_config_is_refused(tmp_path, trained):
    shutil.copytree(trained("train.epochs=1", "vcon.epochs=0")[0], tmp_path, dirs_exist_ok=True)
    with pytest.raises(ConfigError, match=r"another run \(differs in \['compression'\]\)"):
        quick(tmp_path, "train.epochs=1", "vcon.epochs=0", "compression=quant")


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["prune", "lrd"])
def test_compiled_blocks_train_like_eager_ones(tmp_path, compression):
    """train.compile=true (what a CUDA run does by default) through every phase — β = 1, the blend, β = 0 with the
    low-rank originals dropped (a recompilation) — and evaluation in eager mode: same steps, nearly the same loss
    (kernels fuse differently, so not bit-identical) and accuracy."""
    overrides = (f"compression={compression}", "train.epochs=3", "vcon.epochs=2")
    eager = quick(tmp_path / "eager", *overrides, "train.compile=false")
    compiled = quick(tmp_path / "compiled", *overrides, "train.compile=true")
    assert compiled["step"] == eager["step"] and compiled["beta"] == eager["beta"] == 0.0
    for a, b in zip(compiled["history"], eager["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
    assert compiled["test_acc"] == pytest.approx(eager["test_acc"], abs=1.0)


@pytest.mark.parametrize("overrides, check", [
    (("compression=quant",), lambda c: c["zero_fraction"] == 0 and 1 < c["bits_per_weight"] < 1.01),
    (("compression=prune-quant", "compression.steps.0.ratio=0.75"),
     lambda c: c["zero_fraction"] == pytest.approx(0.75, abs=1e-3) and 1.25 < c["bits_per_weight"] < 1.26),
    (("compression=lrd", "compression.rank=8"),
     lambda c: c["params_after"] == 4 * 8 * ((64 + 64) * 4 + (64 + 256) * 2)),
    (("compression=none",), lambda c: c["params_after"] == c["params_before"] == 4 * (4 * 64 * 64 + 2 * 64 * 256)
     and c["bits_per_weight"] == 32),
    (("compression=prune", "compression.granularity=2:4", "compression.ratio=0.5"),
     lambda c: c["zero_fraction"] == 0.5),
])
def test_each_compression_reports_its_figures(tmp_path, overrides, check):
    results = quick(tmp_path, "train.epochs=1", "vcon.epochs=0.5", *overrides)
    assert check(results["compression"]), results["compression"]
    assert json.loads((tmp_path / "results.json").read_text())["compression"] == results["compression"]


@pytest.mark.parametrize("compression", ["compression=lrd", "compression=prune"])
def test_a_one_shot_run_reports_the_dense_models_accuracy(compression, trained):
    """One-shot compresses at step 0: the dense accuracy is still measured on the model before compression."""
    _, dense = trained("compression=none", "train.epochs=1")
    _, one_shot = trained(compression, "train.epochs=1", "vcon.epochs=0")
    assert one_shot["dense_test_acc"] == dense["dense_test_acc"]


def test_lrd_original_branches_are_gone_once_beta_is_zero(tmp_path):
    quick(tmp_path, "compression=lrd", "compression.rank=4", "train.epochs=2", "vcon.epochs=1")
    keys = checkpoint.load(tmp_path)["model"].keys()
    assert not any(".original." in k for k in keys) and any(".compressed.down." in k for k in keys)


@pytest.mark.parametrize("overrides, message", [
    (("compression.ratio=1.5",), "compression.ratio=1.5"),
    (("compression=lrd", "compression.rank=0"), "compression.rank=0"),
    (("compression=lrd", "compression.rank=65"), "compression.rank=65 .* at most 64"),
    (("vcon.epochs=-2",), "vcon.epochs=-2"),
    (("vcon.epochs=3",), "vcon.epochs=3 is 24 optimizer steps, longer than the run's 16"),
    (("schedule=linear", "vcon.shape=zigzag"), "vcon.shape='zigzag'"),
    (("target.include=[nothing*]",), r"include=\['nothing\*'\].*matches no module"),
    (("data=imagefolder", "data.path=/no/such/folder"), "data.path='/no/such/folder'"),
    (("train.batch_size=100", "train.grad_accum=3"), "train.batch_size=100"),
])
def test_bad_input_is_refused_before_training(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        quick(tmp_path, *overrides)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "results.json").exists()


def digest(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_bad_input_through_run_py_exits_nonzero_and_leaves_earlier_runs_alone(tmp_path):
    earlier = tmp_path / "outputs" / "earlier"
    assert run_py(*QUICK, "train.epochs=1", "vcon.epochs=0", f"hydra.run.dir={earlier}", cwd=tmp_path).returncode == 0
    before = digest(tmp_path / "outputs")
    for args, message in [
        (["compression=zip"], "Could not find 'compression/zip'"),
        (["compression.ratio=1.0"], "compression.ratio=1.0 is not allowed: expected a fraction in [0, 1)"),
        (["vcon.epochs=99"], "vcon.epochs=99"),
        (["data=imagefolder", "data.path=/no/such"], "data.path='/no/such'"),
    ]:
        done = run_py(*args, cwd=tmp_path)
        assert done.returncode != 0
        assert message in done.stderr + done.stdout
        assert "Traceback" not in done.stderr
    after = digest(tmp_path / "outputs")
    assert {k: v for k, v in after.items() if k in before} == before
    assert not [k for k in after if k not in before and k.name in ("checkpoint.pt", "results.json")]


@pytest.mark.slow
def test_unreachable_hub_fails_at_once_with_the_offline_options(tmp_path):
    for env in ({}, {"HF_HUB_OFFLINE": "1"}):
        if not env and hub.reachable():
            continue  # a machine with network would start downloading CIFAR-10 here
        started = time.monotonic()
        done = run_py("experiment=paper-vit-tiny", cwd=tmp_path, env=env)
        assert done.returncode != 0
        assert "Hugging Face Hub is unreachable" in done.stderr and "model=vit-micro" in done.stderr
        assert "Traceback" not in done.stderr
        assert time.monotonic() - started < 60


def test_local_image_folder(tmp_path):
    """data=imagefolder reads real PNG files through datasets; RGB 16x16 images meet a 1-channel 28x28 model."""
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    for split, count in (("train", 24), ("test", 6)):
        for label in ("bag", "shoe"):
            folder = tmp_path / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (16, 16, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.png")
    results = quick(tmp_path / "run", "data=imagefolder", f"data.path={tmp_path / 'images'}", "data.val_size=8",
                    "data.image_size=16", "train.batch_size=8", "train.epochs=1", "vcon.epochs=1")
    assert results["step"] == (48 - 8) // 8
    assert 0 <= results["test_acc"] <= 100 and results["compression"]["layers"] == 24


STREAMED = ["model=vit-micro-scratch", "model.config.num_channels=3", "data=imagenet", "data.image_size=28",
            "data.workers=2", "data.val_size=12", "data.train_size=null", "data.test_size=null", "train.batch_size=12"]


@pytest.mark.slow
@pytest.mark.parametrize("source", ["memory", "streamed"])
def test_a_killed_run_started_again_with_the_same_command_resumes(tmp_path, source):
    """SIGKILL at any moment leaves a usable checkpoint (written atomically); the same command resumes from it and
    ends exactly where an uninterrupted run ends, with images held in memory or streamed from a JPEG folder."""
    args = [*QUICK, "train.epochs=4", "vcon.epochs=2", "train.checkpoint_every_min=0.001"]  # and mid-epoch
    if source == "streamed":
        args += [*STREAMED, f"data.path={make_folder(tmp_path / 'in')}"]
    whole_dir = tmp_path / "whole"
    job.run(make_config(*args), whole_dir)  # the uninterrupted run, in this process (what run.py runs)
    args.append(f"outputs={tmp_path / 'killed'}")
    command = [sys.executable, str(ROOT / "run.py"), *args]
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = tmp_path / "killed" / "runs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until a checkpoint is saved mid-epoch, then kill at once
        found = list(runs.glob("*/run.log"))
        if found and "checkpoint at epoch" in found[0].read_text():
            break
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    (run_dir,) = runs.iterdir()
    killed_at = checkpoint.load(run_dir)["progress"]  # a complete checkpoint, whenever the kill came
    assert not list(run_dir.glob(".checkpoint.pt.*.tmp")) or checkpoint.load(run_dir)
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    log = (run_dir / "run.log").read_text()
    assert f"at epoch {killed_at['epoch']}, batch {killed_at['batch']}, step {killed_at['step']}" in log
    a = json.loads((run_dir / "results.json").read_text())
    b = json.loads((whole_dir / "results.json").read_text())
    assert (a["step"], a["beta"], [h["epoch"] for h in a["history"]]) == (b["step"], b["beta"], [1, 2, 3, 4])
    assert a["test_acc"] == b["test_acc"] and a["history"][-1]["loss"] == b["history"][-1]["loss"]
    assert b["test_acc"] > 60  # it learned: chance is 10 % (Fashion-MNIST), 33 % (three colours)
    wa, wb = checkpoint.load(run_dir)["model"], checkpoint.load(whole_dir)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    print(f"\n{source}: killed at epoch {killed_at['epoch']}, batch {killed_at['batch']}; resumed run and "
          f"uninterrupted run: step {a['step']}, test accuracy {a['test_acc']:.2f} and {b['test_acc']:.2f}, "
          "identical weights")


@pytest.mark.slow  # run.py launched twice, a sweep of two jobs each: minutes on a busy machine
def test_a_sweep_skips_finished_runs_and_survives_a_failed_one(tmp_path):
    """In-process launcher: a NaN run fails with its error recorded, the others finish, the table lists both;
    launched again, the finished runs are not trained again."""
    args = ["-m", *QUICK, "train.epochs=1", "vcon.epochs=0", "train.lr=1e-3,1e12", f"outputs={tmp_path}",
            "sweep_name=again"]
    first = run_py(*args)
    assert first.returncode == 1  # the sweep ran to the end, and its status says a run failed
    sweep = tmp_path / "sweeps" / "again"
    (failed,) = sweep.glob("*/error.json")
    assert "Diverged: the run diverged: loss is nan" in json.loads(failed.read_text())["error"]
    (ok,) = sweep.glob("*/results.json")
    stamp = ok.stat().st_mtime_ns
    table = (sweep / "summary.md").read_text()
    assert "(1/0)" in table and "(0/1)" in table and "Diverged" in table
    second = run_py(*args)
    assert "already finished" in second.stdout + second.stderr
    assert ok.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_two_sweeps_started_in_the_same_second_do_not_collide(tmp_path):
    command = [sys.executable, str(ROOT / "run.py"), "-m", *QUICK, "train.epochs=1", "vcon.epochs=0", "seed=0,1",
               "data.train_size=128", "data.test_size=128", f"outputs={tmp_path}"]
    sweeps = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    assert all(p.wait(timeout=300) == 0 for p in sweeps)
    folders = sorted((tmp_path / "sweeps").iterdir())
    assert len(folders) == 2  # the names go down to the microsecond, so starting together never shares a folder
    for folder in folders:
        assert len(list(folder.glob("*/results.json"))) == 2 and (folder / "summary.md").exists()
