"""Train with ``backend="quartet"`` on several GPUs (or CPU processes) with PyTorch's own engines.

    torchrun --nproc-per-node 2 examples/train_distributed.py --parallel fsdp2
    torchrun --nproc-per-node 2 examples/train_distributed.py --parallel ddp --model 125m

The recipe of a multi-GPU quartet run, in the order it matters:
1. the same initial weights on every rank (same seed; DDP also broadcasts rank 0's);
2. wrap with DDP, or shard with ``fully_shard`` per block then the root (FSDP2);
3. compile the wrapped model (or each block) with ``backend="quartet"``;
4. after that, a different backward seed per rank (``distributed.backward_seed``), so the
   stochastic gradient rounding of the ranks is independent.
"""

from __future__ import annotations

import argparse

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.nn.parallel import DistributedDataParallel

from quartet_bench import parallel as distributed
from quartet_bench.data import ByteCorpus
from quartet_bench.models import ModelSpec
from quartet_compile import backend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parallel", choices=["ddp", "fsdp2"], default="fsdp2")
    parser.add_argument("--model", default="30m")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--inner-backend", default="inductor")
    args = parser.parse_args()

    device = distributed.setup()
    rank, world = distributed.world()
    torch.manual_seed(0)
    model = ModelSpec(args.model).build().to(device)
    quartet = backend(recipe="quartet2", inner_backend=args.inner_backend)
    if args.parallel == "ddp":
        model = DistributedDataParallel(model, broadcast_buffers=False)
        step = torch.compile(model, backend=quartet)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=policy)
        fully_shard(model, mp_policy=policy)
        step = torch.compile(model, backend=quartet)
        autocast = torch.autocast(device.type, enabled=False)
    torch.manual_seed(distributed.backward_seed(1))

    optimizer = torch.optim.AdamW(model.parameters(), lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batches = ByteCorpus.load().batches(args.global_batch, args.seq_len, torch.Generator().manual_seed(0))
    for i in range(args.steps):
        tokens = next(batches)[rank::world].to(device)  # this rank's share of the global batch
        with autocast:
            loss = step(tokens)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if rank == 0 and (i % 20 == 0 or i + 1 == args.steps):
            print(f"step {i:4d}  loss {loss.item():.4f} (rank 0's share)", flush=True)
    distributed.teardown()


if __name__ == "__main__":
    main()
