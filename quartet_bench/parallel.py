"""Multi-process training with PyTorch's own engines (DDP, FSDP2) under ``torchrun``: process
group setup, per-rank backward seeds, model wrapping and data sharding.

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
from torch import Tensor, nn

from .models import CausalLMLoss

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


def wrap_parallel(model: CausalLMLoss, parallel: str, autocast_bf16: bool, device: torch.device) -> nn.Module:
    """``model`` under ``parallel`` (``none``, ``ddp`` or ``fsdp2``, whose bf16 mixed precision
    replaces autocast when ``autocast_bf16``)."""
    if parallel == "none":
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # The only buffers are the rotary tables, equal on every rank: broadcasting them each step
        # would cost a collective and a graph break for nothing.
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)
    if parallel == "fsdp2":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": policy} if autocast_bf16 else {}
        for block in model.blocks:
            fully_shard(block, **kwargs)
        return fully_shard(model, **kwargs)
    raise ValueError(f"parallel must be none, ddp or fsdp2, got {parallel!r}")


def local_rows(tokens: Tensor) -> Tensor:
    """This rank's share of the global batch: every rank draws the same global batch (same
    generator) and keeps rows ``rank::world``, so one GPU and N GPUs see the same data."""
    rank, size = world()
    return tokens[rank::size]


def global_mean(value: Tensor) -> Tensor:
    size = world()[1]
    if size > 1:
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= size
    return value
