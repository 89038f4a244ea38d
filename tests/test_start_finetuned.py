"""model.start_finetuned: a compressed run starts from its dense fine-tune (the same run with compression=none, in the
run folder beside it), which is trained first where it is not finished, once for every run that needs it."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import QUICK, ROOT, make_config, requires_fashion_mnist, run_py

from vcon.app import identity, job, sweep
from vcon.errors import ConfigError
from vcon.train import checkpoint, distributed
from vcon.train.loop import Training

pytestmark = requires_fashion_mnist
# two steps an epoch, Q = one step: seconds a run
TINY = [*QUICK, "model=vit-micro-scratch", "data.train_size=128", "data.val_size=64", "data.test_size=128",
        "train.epochs=1", "vcon.epochs=0.5"]
FINETUNED = "model.start_finetuned=true"


def test_compressed_runs_start_from_their_dense_fine_tune_which_trains_once(tmp_path):
    runs = tmp_path / "runs"
    one_shot = make_config(*TINY, FINETUNED, "vcon.epochs=0", f"outputs={tmp_path}")
    blended = make_config(*TINY, FINETUNED, "compression=quant", "method=gradual", f"outputs={tmp_path}")
    dense_dir = runs / identity.run_id(make_config(*TINY, "compression=none"))  # what compression=none trains
    assert runs / identity.run_id(job.dense_config(blended)) == dense_dir

    first = job.run(one_shot, runs / identity.run_id(one_shot))
    dense = json.loads((dense_dir / "results.json").read_text())
    assert dense["dense_test_acc"] != dense["test_acc"]  # fine-tuning changed the model: it is not the start
    stamp = (dense_dir / "checkpoint.pt").stat().st_mtime_ns
    second = job.run(blended, runs / identity.run_id(blended))
    assert (dense_dir / "checkpoint.pt").stat().st_mtime_ns == stamp  # found finished, not trained again
    assert first["dense_test_acc"] == second["dense_test_acc"] == dense["test_acc"]  # both start from its weights
    listed = sweep.read_run(dense_dir)  # a run folder as Hydra makes them: tables and vcon-report list it
    assert listed["status"] == "done"
    assert listed["identity"] == identity.identity(make_config(*TINY, "compression=none"))


def test_the_teacher_of_a_run_started_fine_tuned_is_the_dense_fine_tune(tmp_path):
    cfg = make_config(*TINY, FINETUNED, "distill=logits", f"outputs={tmp_path}")
    compression, method = job.check(cfg)
    run_dir = tmp_path / "runs" / identity.run_id(cfg)
    start = job.fine_tuned(cfg, run_dir)
    training = Training(cfg, run_dir, identity.identity(cfg), compression, method, torch.device("cpu"),
                        distributed.SINGLE, None, start)
    taught = training.teacher.model.state_dict()
    assert taught.keys() == start.keys() and all(torch.equal(taught[k], start[k]) for k in start)


class Interrupted(Exception):
    pass


def interrupt(epoch):
    raise Interrupted


@pytest.mark.slow  # five short trainings: about 45 s
def test_a_resumed_distilled_run_is_taught_by_the_fine_tune_again(tmp_path):
    """Stopped after its first epoch and started again, a distilled run goes on as if it had not stopped: its teacher
    is the dense fine-tune again, not the pretrained model."""
    overrides = (*TINY, FINETUNED, "distill=logits", "train.epochs=2", "vcon.epochs=1", f"outputs={tmp_path}")
    cfg = make_config(*overrides)
    whole_dir, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"  # one dense fine-tune beside both
    whole = job.run(cfg, whole_dir)
    with pytest.raises(Interrupted):
        job.run(cfg, split, on_epoch_end=interrupt)
    resumed = job.run(cfg, split)
    a, b = checkpoint.load(whole_dir)["model"], checkpoint.load(split)["model"]
    assert resumed["step"] == whole["step"] and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert resumed["dense_test_acc"] == whole["dense_test_acc"]


def test_start_finetuned_leaves_every_other_run_id_as_it_was():
    assert identity.run_id(make_config()) == "vit-micro_fashion-mnist_prune-q3_s0_11337ec2"  # as before the key
    assert identity.run_id(make_config("compression=none")) == "vit-micro_fashion-mnist_none_s0_eca991c9"
    assert "start_finetuned" not in identity.identity(make_config(FINETUNED.replace("true", "false")))["model"]
    assert identity.run_id(make_config(FINETUNED)) != identity.run_id(make_config())  # another start: another run
    # a dense run is its own fine-tune: asked for one, it is the same run
    dense = identity.run_id(make_config("compression=none"))
    assert identity.run_id(make_config("compression=none", FINETUNED)) == dense


@pytest.mark.parametrize("value", ["maybe", "1", "null"])
def test_a_bad_start_finetuned_is_refused_naming_it(value):
    with pytest.raises(ConfigError, match=r"model.start_finetuned=.* is not allowed: expected true or false"):
        job.check(make_config(f"model.start_finetuned={value}"))


@pytest.mark.slow  # two run.py processes at once, then a sweep: a minute or two on a busy machine
def test_parallel_runs_and_a_sweep_share_one_dense_fine_tune(tmp_path):
    """Two compressed runs started together (the jobs of a SLURM sweep) wait on the dense fine-tune's folder lock:
    one trains it, the other finds it finished. A sweep that lists compression=none itself holds that run in its
    folder, and its compressed runs start from it."""
    command = [sys.executable, str(ROOT / "run.py"), *TINY, FINETUNED, f"outputs={tmp_path}"]
    together = [subprocess.Popen([*command, f"compression={c}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for c in ("prune", "quant")]
    logs = [p.communicate(timeout=300)[0] for p in together]
    assert [p.returncode for p in together] == [0, 0], logs
    assert sum("dense fine-tuning" in log for log in logs) == 1 and any("already finished" in log for log in logs)
    dense = json.loads(next((tmp_path / "runs").glob("*_none_*/results.json")).read_text())
    for log in logs:
        assert f"dense test accuracy {dense['test_acc']:.2f} %" in log, log[-2000:]

    done = run_py("-m", *TINY, FINETUNED, "compression=none,prune", f"outputs={tmp_path}", "sweep_name=s")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = (tmp_path / "sweeps" / "s" / "summary.md").read_text()
    assert rows.count("| vit-micro-scratch |") == 2 and "(1/0)" in rows  # the dense run once, in the sweep's folder
    assert (done.stdout + done.stderr).count("dense fine-tuning") == 1
