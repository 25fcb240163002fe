"""DDP and FSDP2 on CPU with gloo: the code paths of multi-GPU training, two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from quartet_compile import distributed

from .distributed_checks import same_numbers_as_one_process

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.mark.parametrize("mode", ["ddp", "fsdp2", "fsdp2-per-block"])
def test_two_ranks_compute_the_one_process_numbers(mode, tmp_path):
    errors = mp.get_context("spawn").SimpleQueue()
    try:
        mp.spawn(same_numbers_as_one_process, args=(2, str(tmp_path / "store"), mode, errors), nprocs=2)
    except Exception:
        pytest.fail(errors.get() if not errors.empty() else "a rank failed")


def test_backward_seeds_differ_per_rank_and_rank0_replays_one_gpu(monkeypatch):
    assert distributed.backward_seed(7) == 7
    monkeypatch.setattr(distributed, "world", lambda: (3, 4))
    assert distributed.backward_seed(7) == 7 + 3 * distributed.RANK_SEED_STRIDE


def test_bench_distributed_scaling_runs_on_cpu(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 2000)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "quartet_compile.bench", "--distributed", "--device", "cpu", "--max-ranks", "2",
               "--variants", "eager", "--steps", "3", "--batch", "2", "--seq-len", "32", "--data", str(text),
               "--out", str(out), "--name", "smoke"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split() for line in done.stdout.splitlines() if line.startswith("eager")]
    assert [row[1] for row in lines] == ["1", "2"]
    assert all(float(row[3].replace(",", "")) > 0 for row in lines)
    assert (out / "smoke-scaling.json").exists() and (out / "smoke-scaling.md").exists()


def test_setup_without_torchrun_environment_is_an_error(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises((ValueError, RuntimeError)):
        distributed.setup("cpu")
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("parallel", ["ddp", "fsdp2"])
def test_launcher_example_trains_under_torchrun(parallel):
    example = Path(__file__).resolve().parents[1] / "examples" / "train_distributed.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(example),
               "--parallel", parallel, "--model", "tiny", "--global-batch", "4", "--seq-len", "64", "--steps", "3",
               "--inner-backend", "aot_eager"]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(line.split()[3]) for line in done.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
