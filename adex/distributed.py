"""Multi-process data-parallel training with PyTorch's own engine.

``torchrun --standalone --nproc_per_node N -m adex advisor train eform ...`` starts N
processes with ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set; :func:`context` joins them into
one process group (gloo on CPU, nccl on CUDA). :func:`adex.training.fit` then wraps the
model in ``DistributedDataParallel`` and gives each process an equal share of every
global batch (``training.batch_size`` stays the global batch size, so one process and N
processes take the same optimisation steps); gradients are averaged by DDP, validation
runs on every process (so early stopping agrees) and only rank 0 writes files and
registers the model. Without torchrun nothing changes (world size 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistributedContext:
    """Rank of this process among ``world_size`` (1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context(device: str = "cpu") -> DistributedContext:
    """The torchrun context from the environment; initialises the process group once."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank, world_size, local_rank)


def shutdown() -> None:
    """Leave the process group (no-op when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def replicas_in_sync(model: torch.nn.Module) -> bool:
    """True if every process holds the same parameters (checked by an all-gather of a
    float64 checksum of each parameter; always True when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return True
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()])
    gathered = [torch.zeros_like(sums) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, sums)
    return all(torch.equal(g, gathered[0]) for g in gathered)
