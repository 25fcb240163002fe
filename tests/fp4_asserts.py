"""Bit-for-bit comparison of two NVFP4 tensors, shared by the GPU kernel tests and the
interpreter checks (which run as a script with this folder on ``sys.path``)."""

from __future__ import annotations

from quartet_compile.check import fp4_difference
from quartet_compile.nvfp4 import NVFP4Tensor


def assert_same_fp4(kernel: NVFP4Tensor, ref: NVFP4Tensor) -> None:
    """Same tensor scale, same E4M3 scale bytes, same packed codes (``quartet-check``'s test)."""
    difference = fp4_difference(kernel, ref)
    assert difference is None, difference
