"""Several processes (torchrun) or one: what the training loop needs to know, and nothing when alone.

Under `torchrun --nproc_per_node N` each process gets RANK/WORLD_SIZE/LOCAL_RANK; training then wraps the
model in DistributedDataParallel (NCCL on GPUs, gloo on CPU) and every rank takes its own slice of each
epoch's units. Without those variables this is a single process and nothing is initialised. On a machine
with several GPUs every process first claims one from the lock-file pool (`train.gpu_pool`) and sees it
as device 0, so concurrent jobs spread over the GPUs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from mmhealth.train import gpu_pool


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device_index: int = 0  # this process's CUDA device: 0 when the GPU pool left it a single one

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup() -> Processes:
    """Claim a GPU from the pool (before CUDA starts), then join the process group torchrun describes in
    the environment, if any."""
    pooled = gpu_pool.claim_for_process() is not None and len(gpu_pool.visible_gpus()) == 1
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes()
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device_index = 0 if pooled else local_rank
    if torch.cuda.is_available():
        torch.cuda.set_device(device_index)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    procs = Processes(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank,
                      device_index=device_index)
    if not procs.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank speaks for all in the job's log
    return procs


def device_for(procs: Processes) -> torch.device:
    return torch.device(f"cuda:{procs.device_index}") if torch.cuda.is_available() else torch.device("cpu")


def wrap(model: nn.Module, procs: Processes) -> nn.Module:
    """DDP around the model when several processes train it; the model itself otherwise."""
    if procs.world == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # A batch may lack a modality's rows, leaving its encoder unused in that step.
    return DistributedDataParallel(model, device_ids=[procs.device_index] if torch.cuda.is_available() else None,
                                   find_unused_parameters=True)


def rank_slice(order, procs: Processes):
    """This rank's equal share of an epoch's shuffled units (every rank then takes the same step count)."""
    share = len(order) // procs.world
    return order[procs.rank * share:(procs.rank + 1) * share] if procs.world > 1 else order


def teardown(procs: Processes) -> None:
    if procs.world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
