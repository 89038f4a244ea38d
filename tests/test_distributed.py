"""Where each process of a multi-node SLURM job finds its place: the environment every task derives from SLURM's
variables, for a job larger than the local cluster (tests/test_slurm.py runs real jobs on its two nodes). And two
gloo processes training together that see different clocks and signals: they still checkpoint and stop together."""
import os
import signal

import pytest
from conftest import requires_fashion_mnist

from vcon.train import checkpoint, distributed

RENDEZVOUS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture(autouse=True)
def environment_restored():
    """The derivation writes os.environ itself; later tests (and the SLURM jobs they submit, which inherit it) must
    not see a 2-node job's rendezvous."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def slurm_task(monkeypatch, procid: int, job_id: str = "4242", nodes: int = 2, per_node: int = 4) -> dict:
    """The variables SLURM sets in task ``procid`` of `sbatch --nodes=2 --ntasks-per-node=4` (through srun), and the
    rendezvous variables and World this task derives from them."""
    for key in (*RENDEZVOUS, "SUBMITIT_EXECUTOR", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    for key, value in {"SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": "gpu-[07-08]", "SLURM_JOB_NUM_NODES": nodes,
                       "SLURM_NTASKS": nodes * per_node, "SLURM_STEP_NUM_TASKS": nodes * per_node,
                       "SLURM_PROCID": procid, "SLURM_LOCALID": procid % per_node,
                       "SLURM_NODEID": procid // per_node}.items():
        monkeypatch.setenv(key, str(value))
    world = distributed.world_from_environment()
    return {"world": world, **{key: os.environ[key] for key in (*RENDEZVOUS, "CUDA_VISIBLE_DEVICES")}}


def test_every_task_of_a_two_node_job_derives_one_rendezvous(monkeypatch):
    tasks = [slurm_task(monkeypatch, procid) for procid in range(8)]
    assert [t["world"] for t in tasks] == [distributed.World(r, 8, r % 4) for r in range(8)]
    assert {t["MASTER_ADDR"] for t in tasks} == {"gpu-07"}  # the job's first node
    assert len({t["MASTER_PORT"] for t in tasks}) == 1 and 20000 <= int(tasks[0]["MASTER_PORT"]) <= 60000
    assert {t["LOCAL_WORLD_SIZE"] for t in tasks} == {"4"}
    assert {t["CUDA_VISIBLE_DEVICES"] for t in tasks} == {"0,1,2,3"}  # each picks cuda:<local rank> of all four
    other_job = slurm_task(monkeypatch, 0, job_id="4243")
    assert other_job["MASTER_PORT"] != tasks[0]["MASTER_PORT"]  # two jobs on one node do not share a port


def test_a_port_the_user_sets_and_torchrun_variables_are_kept(monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29500")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in {"SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1", "SLURM_NTASKS": "2",
                       "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1",
                       "SLURM_JOB_NUM_NODES": "1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    assert distributed.world_from_environment() == distributed.World(1, 2, 1)
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"]) == ("node1", "29500")
    monkeypatch.setenv("RANK", "3")  # torchrun's variables win over SLURM's
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.world_from_environment() == distributed.World(3, 4, 0)


@pytest.mark.parametrize("tasks", ["1", None])
def test_one_process_is_the_plain_case(monkeypatch, tasks):
    for key in ("WORLD_SIZE", "RANK", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    if tasks:
        monkeypatch.setenv("SLURM_STEP_NUM_TASKS", tasks)
    assert distributed.world_from_environment() is distributed.SINGLE



# Two gloo processes training the real config: a tiny run, 4 optimizer steps an epoch (256 images, batch 64).
TINY = ["model=vit-micro-scratch", "data.train_size=256", "data.val_size=64", "data.test_size=128", "train.epochs=2",
        "train.batch_size=64", "vcon.epochs=1", "train.log_every=1", "tracking.wandb.mode=disabled"]


class JumpingClock:
    """``vcon.train.loop``'s ``time`` in one process: ``monotonic`` jumps an hour ahead at its ``jump_at``-th reading
    (1: ``fit`` starts the checkpoint clock, then one reading a step), so that this process alone believes a
    checkpoint overdue at step ``jump_at - 1``."""

    def __init__(self, jump_at: int) -> None:
        import time

        self.perf_counter, self.readings, self.jump_at, self._monotonic = time.perf_counter, 0, jump_at, time.monotonic

    def monotonic(self) -> float:
        self.readings += 1
        return self._monotonic() + (3600 if self.readings >= self.jump_at else 0)


def train_as_rank(rank: str, port: str, folder: str, scenario: str) -> None:
    """One of the two processes (``python tests/test_distributed.py ...``): joins the group as under torchrun and
    runs ``train.run`` on ``TINY`` in the folders of ``scenario``, printing for each run a line
    ``{"run": ..., "exit": ..., "saved": [the steps it saved at]}``."""
    import json
    import time
    from pathlib import Path

    import torch
    from conftest import make_config

    from vcon.app import job
    from vcon.train import loop as train

    os.environ.update(RANK=rank, WORLD_SIZE="2", LOCAL_RANK=rank, MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)  # two processes on a few shared cores
    saved, save, validate = [], train.Training.save, train.Training.validate

    def recorded_save(self, finished):
        saved.append(self.progress.step)
        save(self, finished)

    def signalled_validate(self):  # in end_epoch, before it decides whether to leave
        signal_me(self.progress.epoch + 1)
        return validate(self)

    def signal_me(epoch):
        if epoch == 1 and rank == "0":
            os.kill(os.getpid(), signal.SIGUSR2)

    train.Training.save = recorded_save

    def run(name, on_epoch_end=None, *overrides):
        saved.clear()
        try:
            job.run(make_config(*TINY, *overrides), Path(folder) / name, on_epoch_end=on_epoch_end)
            code = 0
        except SystemExit as stopped:
            code = stopped.code
        print(json.dumps({"run": name, "exit": code, "saved": saved}), flush=True)

    if scenario == "clocks":
        train.time = JumpingClock(3) if rank == "1" else time
        run("clocks")
    elif scenario == "teacher":  # each process builds the scratch model from its own seed; rank 0's is everyone's
        fit = train.Training.fit

        def recorded_fit(self, *args):  # before DDP, which would broadcast the student anyway
            def total(net):
                return sum(float(p.double().sum()) for p in net.parameters())
            print(json.dumps({"teacher": total(self.teacher.model), "student": total(self.net),
                              "dense_test": self.dense}))
            return fit(self, *args)

        train.Training.fit = recorded_fit
        run("teacher", None, "distill=logits", "train.epochs=1")
    else:  # signals to rank 0 alone: between two steps, then while it validates the epoch just trained
        run("between-steps", signal_me)
        run("between-steps")  # resumed
        train.Training.validate = signalled_validate
        run("in-validation")


def two_ranks(tmp_path, scenario: str, timeout: float = 120) -> list[list[dict]]:
    """``train_as_rank`` in two processes; returns each rank's records of its runs. Fails, and kills both, if they
    are not done within ``timeout`` seconds (a hang)."""
    import json
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), port, str(tmp_path), scenario], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outputs, deadline = [], time.monotonic() + timeout
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(deadline - time.monotonic(), 1)))
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"the two processes hang: not done after {timeout} s; their runs so far: "
                    f"{[p.communicate()[0] for p in procs]}")
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    return [[json.loads(line) for line in out.splitlines()] for out, _ in outputs]


@pytest.mark.slow
@requires_fashion_mnist
def test_two_processes_whose_clocks_disagree_checkpoint_together(tmp_path):
    """Rank 1's clock says a checkpoint is overdue at step 2, rank 0's does not: both save there (any process's
    clock decides for all), then at each epoch's end, and the run ends. Before, rank 1 alone went into the
    checkpoint's gather while rank 0 went on to the next step's all-reduce: both hung."""
    done = [{"run": "clocks", "exit": 0, "saved": [2, 4, 8]}]
    assert two_ranks(tmp_path, "clocks") == [done, done]
    assert checkpoint.load(tmp_path / "clocks")["finished"] and (tmp_path / "clocks" / "results.json").exists()


@pytest.mark.slow
@requires_fashion_mnist
def test_two_processes_are_taught_by_one_teacher(tmp_path):
    """A model built from its config (vit-micro-scratch) starts from each process's own seed; before DDP would
    broadcast it, the dense evaluation, the teacher and the compressed student are rank 0's model in both processes.
    Before, the dense accuracy summed each process's own random model's counts on its half of the test split."""
    rank0, rank1 = two_ranks(tmp_path, "teacher")
    assert rank0[0] == rank1[0] and rank0[1]["exit"] == rank1[1]["exit"] == 0


@pytest.mark.slow
@requires_fashion_mnist
def test_a_signal_to_one_process_stops_both_at_the_same_step(tmp_path):
    """SIGUSR2 to rank 0 alone, after epoch 1: the next step's collective carries it, both save at that step and
    leave (rank 1 as if sent SIGTERM); started again, both go on from there to the end. Sent while rank 0 validates
    epoch 1: both leave after the epoch's checkpoint, rank 1 too, which was not signalled."""
    rank0, rank1 = two_ranks(tmp_path, "signals", timeout=240)
    for records, exit in ((rank0, 128 + signal.SIGUSR2), (rank1, 128 + signal.SIGTERM)):
        assert records == [{"run": "between-steps", "exit": exit, "saved": [4, 5]},
                           {"run": "between-steps", "exit": 0, "saved": [8]},
                           {"run": "in-validation", "exit": exit, "saved": [4]}]
    assert checkpoint.load(tmp_path / "between-steps")["finished"]
    assert checkpoint.load(tmp_path / "in-validation")["progress"]["step"] == 4


if __name__ == "__main__":
    train_as_rank(*__import__("sys").argv[1:])
