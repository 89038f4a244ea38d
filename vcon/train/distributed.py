"""Data parallelism over torch.distributed, when the run is launched as several processes (torchrun, or SLURM tasks
through submitit). One process is the plain case: every helper here then does nothing."""
from __future__ import annotations

import atexit
import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes metrics, checkpoints and results."""
        return self.rank == 0


SINGLE = World()


def world_from_environment() -> World:
    """This process's place among the processes that torchrun (RANK, WORLD_SIZE...) or a multi-task SLURM step
    describes. In a SLURM step of several tasks, on one node or many, the env:// rendezvous variables are derived
    from SLURM's own (submitit's ``TorchDistributedEnvironment``): rank SLURM_PROCID, local rank SLURM_LOCALID, the
    job's first node as MASTER_ADDR, MASTER_PORT drawn from the job id (the same in every task, different between
    jobs sharing a node) unless set."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        import submitit

        # submitit's jobs set SUBMITIT_EXECUTOR; a plain `srun python run.py` does not, and SLURM's variables are
        # all the derivation reads
        os.environ.setdefault("SUBMITIT_EXECUTOR", "slurm")
        # overwrite: export refuses a MASTER_PORT already set, though it is the port it has just read from there
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(use_cuda: bool) -> World:
    """Join the process group of ``world_from_environment()``: NCCL on GPUs (the process's GPU is its local rank's;
    every GPU of the node stays visible, so that NCCL can use peer access between them), gloo on CPUs."""
    if os.environ.get("SLURM_CPUS_PER_TASK"):  # use the cores SLURM gave this task, not every core of the node
        torch.set_num_threads(int(os.environ["SLURM_CPUS_PER_TASK"]))
    world = world_from_environment()
    if world.size > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        # left to interpreter teardown, the group's threads can outlive Python's and abort the process (SIGABRT,
        # "terminate called without an active exception") after a run that finished well
        atexit.register(dist.destroy_process_group)
    return world


def sum_(value: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over the processes, on ``value``'s device (NCCL's collectives take CUDA tensors only)."""
    if world.size == 1:
        return value
    total = value.clone()
    dist.all_reduce(total)
    return total


def gather(obj: object, world: World) -> list:
    """Every process's ``obj``, in rank order (on every process)."""
    if world.size == 1:
        return [obj]
    objs: list = [None] * world.size
    dist.all_gather_object(objs, obj)
    return objs


def broadcast_(module: torch.nn.Module, world: World) -> None:
    """Rank 0's parameters and buffers into every process's copy of ``module``, in place."""
    if world.size > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, 0)


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()
