"""Multi-process training with PyTorch's own engines (DDP, FSDP2) under ``torchrun``.

Nothing here changes the numerics: each rank quantizes its local activations and gradients, and
the weights the compiled linears see are whole (DDP replicates them; FSDP2 all-gathers them before
each block's forward and backward), so a weight's tensor amax is that of the full weight and the
FP4 weight is the one a single GPU computes. ``tests/test_distributed.py`` checks this bit for
bit. Each rank draws its own backward randomness (see :func:`backward_seed`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

RANK_SEED_STRIDE = 1_000_003
"""Offset between the backward seeds of consecutive ranks."""


def world() -> tuple[int, int]:
    """``(rank, world size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def backward_seed(seed: int) -> int:
    """The seed of this rank's backward randomness. Rank 0 uses ``seed`` (so it replays a
    single-GPU run); other ranks are offset, so their stochastic rounding is independent: with
    the same stream on every rank, the rounding errors of the averaged gradient would be
    correlated and averaging over ranks would not shrink them."""
    return seed + RANK_SEED_STRIDE * world()[0]


def setup(device: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes (NCCL on GPUs, gloo on CPUs) and return this
    rank's device. Idempotent."""
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if not use_cuda:
        return torch.device("cpu")
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(local)
    return local


def teardown() -> None:
    """Leave the process group once every rank has finished: a rank that destroys its group while
    another still works is one way PyTorch's teardown can hang (pytorch/pytorch#75097)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
