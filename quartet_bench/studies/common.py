"""Timing helpers shared by the kernel and layer studies (CUDA); the two that ``quartet-check``
times with too come from :mod:`quartet_compile.check`."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from quartet_compile.check import layer_step, median_ms

__all__ = ["copy_bandwidth", "host_us", "layer_step", "median_ms"]


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
