"""Bodies of the 2-process gloo checks (``tests/test_distributed.py``); a module of their own
because ``torch.multiprocessing.spawn`` imports the function it runs."""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import quartet_compile
from quartet_bench.models import CausalLMLoss, ModelSpec


def _parallel(model: CausalLMLoss, mode: str, backend: quartet_compile.QuartetBackend) -> nn.Module:
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return torch.compile(DistributedDataParallel(model, broadcast_buffers=False), backend=backend)
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    if mode == "fsdp2-per-block":
        for block in model.blocks:
            block.compile(backend=backend)
        return model
    return torch.compile(model, backend=backend)


def _full(grad: torch.Tensor) -> torch.Tensor:
    return grad.full_tensor() if hasattr(grad, "full_tensor") else grad


def same_numbers_as_one_process(rank: int, world: int, store: str, mode: str, errors) -> None:
    """Every rank gets the same batch and backward seed, so the distributed step must equal the
    one-process step bit for bit: loss and every (all-reduced / reduce-scattered) gradient. This
    fails if a rank quantized a weight shard with the shard's own amax."""
    # One thread: the embedding's backward accumulates rows in thread order otherwise, and that
    # nondeterminism (not quantization) would break bit-equality with the one-process model.
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
        torch.manual_seed(0)
        single = ModelSpec("tiny").build()
        model = copy.deepcopy(single)
        options = {"inner_backend": "aot_eager", "min_features": 0}
        backend = quartet_compile.backend(**options)
        step = _parallel(model, mode, backend)
        reference = torch.compile(single, backend=quartet_compile.backend(**options))
        tokens = torch.randint(0, 256, (4, 129), generator=torch.Generator().manual_seed(1))
        for seed in (10, 11):
            torch.manual_seed(seed)
            loss = step(tokens)
            loss.backward()
            torch.manual_seed(seed)
            expected = reference(tokens)
            expected.backward()
            assert torch.isfinite(expected), "reference loss is not finite"
            assert torch.equal(loss.detach(), expected.detach()), f"{mode}: loss {loss.item()} != {expected.item()}"
            for (name, p), q in zip(model.named_parameters(), single.parameters(), strict=True):
                assert torch.equal(_full(p.grad), q.grad), f"{mode}: gradient of {name} differs"
                p.grad, q.grad = None, None
        quantized = sum(d.quantized for report in backend.reports for d in report)
        assert quantized >= 7, f"{mode}: only {quantized} matmuls quantized"  # a block's 7 projections
    except BaseException as exc:  # reported to the parent: a failing assert in a child is otherwise a hang
        errors.put(f"rank {rank}: {type(exc).__name__}: {exc}")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    # Checked and torn down: leave without the interpreter's exit, where FSDP2 over gloo on the CPU
    # (torch 2.13) intermittently aborts ("terminate called without an active exception") after
    # both ranks have returned from here, which the parent would report as a failed rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
