"""Where each process of a multi-node SLURM job finds its place: the environment every task derives from SLURM's
variables, for a job larger than the local cluster (tests/test_slurm.py runs real jobs on its two nodes)."""
import os

import pytest

from vcon import distributed

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
