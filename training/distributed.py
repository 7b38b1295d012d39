"""Data-parallel training across processes, GPUs and hosts with torchrun and DistributedDataParallel.

    torchrun --nproc_per_node=4 -m training train --distributed ...      # one host, 4 GPUs (NCCL)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-endpoint=HOST:29500 -m training train --distributed ...
    torchrun --nproc_per_node=2 -m training train --distributed --device cpu ...   # CPU, gloo backend

Every replica walks the same shuffled order of global batches (a generator seeded identically on all ranks)
and takes its own interleaved slice, so the union of the slices is exactly the single-process batch and DDP's
averaged gradient is the single-process gradient. Posterior noise is drawn per rank. Rank 0 alone evaluates
and writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from training.losses import training_loss
from training.models import VAE


@dataclass(frozen=True)
class Replica:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        return batch if self.world == 1 else batch[self.rank :: self.world]


def start(device: str) -> Replica:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR, ...)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("--distributed needs torchrun (RANK and WORLD_SIZE are not set)")
    replica = Replica(
        int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    )
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return replica


def device_for(replica: Replica, device: str) -> torch.device:
    if device.startswith("cuda") and replica.world > 1:
        torch.cuda.set_device(replica.local_rank)
        return torch.device("cuda", replica.local_rank)
    return torch.device(device)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class LossModule(nn.Module):
    """The training objective as a module, so DDP sees the whole forward pass (ELBO or IWAE) and syncs it."""

    def __init__(self, vae: VAE):
        super().__init__()
        self.vae = vae

    def forward(
        self, x: torch.Tensor, beta: float, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return training_loss(self.vae, x, beta, generator)


def wrap(vae: VAE, replica: Replica) -> nn.Module:
    module = LossModule(vae)
    if replica.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [replica.local_rank] if next(vae.parameters()).is_cuda else None
    return DistributedDataParallel(module, device_ids=device_ids)


def all_sum(values: list[float], replica: Replica, device: torch.device) -> list[float]:
    """Sum logging counters over replicas (a no-op on one process)."""
    if replica.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()
