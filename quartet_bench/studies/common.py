"""Timing helpers shared by the kernel and layer studies (CUDA)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor
from triton.testing import do_bench


def median_ms(fn: Callable[[], object]) -> float:
    """Median ms of ``fn`` over ``triton.testing.do_bench``'s repetitions (CUDA events)."""
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_ms(lambda: dst.copy_(src)) / 1e6


def host_us(fn: Callable[[], object], calls: int = 200) -> float:
    """Wall time per call of ``fn`` issued back to back: its host cost when device work is
    negligible."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def layer_step(fn: Callable, x: Tensor, w: Tensor, g: Tensor) -> Callable[[], None]:
    """One forward+backward of ``fn(x, w)`` against the output gradient ``g``, the grads of
    ``x`` and ``w`` cleared first (what every layer benchmark times)."""

    def run() -> None:
        x.grad = w.grad = None
        fn(x, w).backward(g)

    return run
