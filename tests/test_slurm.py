"""Sweeps on a real SLURM cluster of two nodes on this machine (sweeps/slurm/cluster-up.sh), through Hydra's submitit
launcher: results of every job, settings from a cluster file of the user's, preemption and requeue mid-training, and
data parallelism over two processes on one node and on two nodes.

CI starts the cluster and sets VCON_SLURM=1, which turns a missing cluster into a failure instead of a skip."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import QUICK, make_config, numbered_folder, numbers, requires_fashion_mnist, run_py

from vcon.train import checkpoint


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return done.returncode == 0 and re.search(r"idle|mix|alloc", done.stdout) is not None


if os.environ.get("VCON_SLURM") == "1":
    assert _cluster_up(), "VCON_SLURM=1 but no SLURM cluster answers (run sweeps/slurm/cluster-up.sh)"
pytestmark = [pytest.mark.slow, requires_fashion_mnist,
              pytest.mark.skipif(not _cluster_up(), reason="no SLURM cluster (sweeps/slurm/cluster-up.sh)")]

SLURM = ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20"]
LONGER = ["data.train_size=2048", "data.val_size=256", "data.test_size=512", "train.batch_size=64",
          "train.epochs=3", "vcon.epochs=2", "tracking.wandb.mode=disabled"]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def only_run(sweep_dir: Path) -> Path:
    (run_dir,) = [p.parent for p in sweep_dir.glob("*/results.json")]
    return run_dir


def test_sweep_on_slurm_with_a_users_cluster_file(tmp_path):
    """Four jobs as one SLURM array; the partition and an extra sbatch option come from a cluster file outside the
    repository (--config-dir); a duplicate run is trained once; the sweep's table has every job."""
    own = tmp_path / "my-cluster" / "hydra" / "launcher"
    own.mkdir(parents=True)
    (own / "mycluster.yaml").write_text("defaults:\n  - slurm\npartition: debug\ntimeout_min: 15\n"
                                        "additional_parameters: {comment: vcon-test}\n")
    done = run_py("-m", f"--config-dir={tmp_path / 'my-cluster'}", "hydra/launcher=mycluster",
                  "hydra.launcher.cpus_per_task=1", *QUICK, "data.train_size=128", "data.val_size=64",
                  "data.test_size=128", "compression=prune,quant,none", "vcon.epochs=0,1",
                  f"outputs={tmp_path}", "sweep_name=grid", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "grid"
    runs = sorted(p.parent.name for p in sweep.glob("*/results.json"))
    assert len(runs) == 5  # prune and quant at Q = 0 and 1; the dense run once (it has no Q)
    submitted = "\n".join(p.read_text() for p in sweep.glob(".submitit/*/*submission.sh"))
    assert "#SBATCH --partition=debug" in submitted and "#SBATCH --comment=vcon-test" in submitted
    table = (sweep / "summary.md").read_text()
    assert table.count("| vit-micro |") == 5 and "(2/0)" not in table
    assert "binary" in table and "prune 0.9 layer" in table and "dense" in table
    job_ids = sorted({p.name.split("_")[0] for p in sweep.glob(".submitit/*_*") if p.is_dir()})
    def states():  # accounting lags the jobs' own ends by a moment
        found = subprocess.run(["sacct", "-X", "-n", "-j", ",".join(job_ids), "-o", "State"], capture_output=True,
                               text=True).stdout.split()
        return found if found and "RUNNING" not in found and "PENDING" not in found else None

    assert set(_wait_for(states, 60, "accounting")) == {"COMPLETED"}


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _epoch_saved(run_dirs):
    for run_dir in run_dirs():
        try:
            if checkpoint.load(run_dir)["progress"]["epoch"] >= 1:
                return run_dir
        except (FileNotFoundError, EOFError, RuntimeError, TypeError):
            pass
    return None


@pytest.mark.parametrize("how", ["usr2", "requeue"])
def test_a_stopped_job_is_requeued_and_resumes_where_it_stopped(tmp_path, how):
    """Mid-training, SLURM stops the job: submitit's USR2 (what a time limit sends), or ``scontrol requeue``
    (SIGTERM, then the job is requeued). The job saves, is requeued, and the new job resumes from that step."""
    sweep = tmp_path / "sweeps" / "s"
    launcher = subprocess.Popen(
        ["python", "run.py", *SLURM, *LONGER, f"outputs={tmp_path}", "sweep_name=s"],
        cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run_dir = _wait_for(lambda: _epoch_saved(lambda: sweep.glob("*/")), 300, "the first epoch's checkpoint")
        job_id = next(p for p in sweep.glob(".submitit/*") if p.is_dir()).name.split("_")[0]
        if how == "usr2":
            subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        else:
            subprocess.run(["scontrol", "requeue", job_id], check=True)
        # SLURM holds a requeued job for a while (its BeginTime) before starting it again; release it early, but
        # not within the second the old instance was killed: slurmd refuses a job credential from that second
        # ("Job credential revoked") and the job FAILs, which is why SLURM holds it at all.
        held_since = []
        def released():
            state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True)
            if "BeginTime" in state.stdout:
                held_since[:] = held_since or [time.monotonic()]
                if time.monotonic() - held_since[0] > 2:
                    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
            return launcher.poll() is not None or "RUNNING" in state.stdout and checkpoint.load(run_dir)[
                "progress"]["step"] > 0 and "resumed" in (run_dir / "run.log").read_text()

        _wait_for(released, 600, "the requeued job to start again")
        output, _ = launcher.communicate(timeout=600)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, output[-3000:]
    log = (run_dir / "run.log").read_text()
    caught = "caught SIGUSR2" if how == "usr2" else "caught SIGTERM"
    assert caught in log, log[-2000:]
    resumed = re.findall(r"resumed .* at epoch (\d+), batch (\d+), step (\d+)", log)
    assert len(resumed) == 1, log[-2000:]
    epoch, batch, step = map(int, resumed[0])
    saved_at = [int(s) for s in re.findall(r"checkpoint at epoch \d+, batch \d+, step (\d+)", log)]
    epoch_ends = [int(s) for s in re.findall(r"epoch \d+/3  step (\d+)", log)]
    assert step in saved_at + epoch_ends  # it resumed from the step it saved, nothing lost or repeated
    final = results(run_dir)
    assert final["step"] == 3 * 32 and final["beta"] == 0.0  # 2048 images, batch 64: 32 steps an epoch
    assert [h["epoch"] for h in final["history"]] == [1, 2, 3]
    assert [h["step"] for h in final["history"]] == [32, 64, 96]
    print(f"\n{how}: stopped and saved at step {step} (epoch {epoch}, batch {batch}); resumed from step {step}; "
          f"final step {final['step']}")


def test_two_nodes_match_one_process_with_the_same_global_batch(tmp_path):
    """A job of two nodes, a task on each (gloo over TCP, meeting at the first node), each half of every batch;
    against one process with the same batch of 64."""
    args = [*QUICK, "compression=lrd", "compression.rank=8"]
    two = run_py(*SLURM, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1", *args,
                 f"outputs={tmp_path / 'two'}", "sweep_name=d", timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_py(*args, f"outputs={tmp_path / 'one'}", env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-3000:]
    run_two = only_run(tmp_path / "two" / "sweeps" / "d")
    started = " ".join(p.read_text() for p in (tmp_path / "two" / "sweeps" / "d").glob(".submitit/*/*_log.out"))
    assert "node=0(2), global_rank=0(2)" in started and "node=1(2), global_rank=1(2)" in started  # one per node
    (run_one,) = (tmp_path / "one" / "runs").iterdir()
    a, b = results(run_two), results(run_one)
    assert (a["processes"], b["processes"]) == (2, 1)
    assert a["step"] == b["step"] == 2 * 512 // 64
    assert a["history"][-1]["loss"] == pytest.approx(b["history"][-1]["loss"], rel=1e-3)
    assert a["test_acc"] == pytest.approx(b["test_acc"], abs=1.0)
    wa, wb = checkpoint.load(run_two)["model"], checkpoint.load(run_one)["model"]
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-2
    assert wa.keys() == wb.keys()


def _read_two_epochs(data_cfg, seed: int, batch_size: int) -> dict:
    """In each SLURM task: join the process group as a run does, and read two epochs of the streamed training split
    as the training loop does (``train.epoch_batches``). Returns the numbers of the images this task read."""
    from vcon import data
    from vcon.train import distributed
    from vcon.train import loop as train

    world = distributed.init(use_cuda=False)
    split = data.load(data_cfg).train
    read = [[numbers(images) for images, _ in train.epoch_batches(split, seed, epoch, len(split), batch_size,
                                                                  world=world)] for epoch in (0, 1)]
    return {"world": (world.rank, world.size), "node": os.environ["SLURMD_NODENAME"],
            "master": os.environ["MASTER_ADDR"], "read": read}


@pytest.mark.parametrize("nodes, per_node", [(1, 2), (2, 1)])
def test_two_slurm_tasks_read_disjoint_halves_of_every_streamed_epoch(tmp_path, nodes, per_node):
    """Two tasks of one SLURM job (on one node, or one on each of two) stream a folder of numbered images: in each
    epoch, each reads half of every batch of the order one process would read, the halves disjoint, nothing repeated
    or left out."""
    import submitit

    from vcon import data
    from vcon.train import distributed
    from vcon.train import loop as train

    cfg = make_config("data=imagefolder", f"data.path={numbered_folder(tmp_path / 'images', 2, 40)}",
                      "data.stream=true", "data.image_size=8", "data.val_size=8", "data.workers=1")
    executor = submitit.AutoExecutor(tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(nodes=nodes, tasks_per_node=per_node, cpus_per_task=1, timeout_min=10,
                               slurm_setup=[f"export PYTHONPATH={Path(__file__).parent}"])  # the job imports tests/
    tasks = executor.submit(_read_two_epochs, cfg.data, cfg.seed, 8).results()
    assert [t["world"] for t in tasks] == [(0, 2), (1, 2)] and len({t["node"] for t in tasks}) == nodes
    assert {t["master"] for t in tasks} == {tasks[0]["node"]}  # rank 0's node, where the others meet it
    split = data.load(cfg.data).train
    for epoch in (0, 1):
        one = [numbers(images) for images, _ in train.epoch_batches(split, cfg.seed, epoch, len(split), 8,
                                                                    world=distributed.SINGLE)]
        first, second = (t["read"][epoch] for t in tasks)
        assert len(one) == len(first) == len(second) == (80 - 16) // 8
        for whole, a, b in zip(one, first, second):
            assert len(a) == len(b) == 4 and not set(a) & set(b) and sorted(a + b) == sorted(whole)
        print(f"\n{nodes} node(s), epoch {epoch}: rank 0 read {sum(map(len, first))} images, "
              f"rank 1 {sum(map(len, second))}, "
              f"none in common; together the {sum(map(len, one))} of one process's epoch, batch by batch")
    assert tasks[0]["read"][0] != tasks[0]["read"][1]  # a new order each epoch
