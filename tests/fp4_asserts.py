"""Bit-for-bit comparison of two NVFP4 tensors or quantizer outputs, shared by the GPU kernel
tests and the interpreter checks (which run as a script with this folder on ``sys.path``)."""

from __future__ import annotations

import torch

from quartet_compile.check import fp4_difference
from quartet_compile.kernels.quantize import Quantized
from quartet_compile.nvfp4 import NVFP4Tensor


def assert_same_fp4(kernel: NVFP4Tensor, ref: NVFP4Tensor) -> None:
    """Same tensor scale, same E4M3 scale bytes, same packed codes (``quartet-check``'s test)."""
    difference = fp4_difference(kernel, ref)
    assert difference is None, difference


def assert_same_quantized(kernel: Quantized, ref: Quantized) -> None:
    """Same outputs of two quantizer launches: FP4 codes written by both or neither (and then the
    same), the same unscaled bf16 operand and the same tensor scale."""
    assert (kernel.fp4 is None) == (ref.fp4 is None)
    if ref.fp4 is not None:
        assert_same_fp4(kernel.fp4, ref.fp4)
    assert torch.equal(kernel.unscaled_bf16, ref.unscaled_bf16)
    assert torch.equal(kernel.tensor_scale, ref.tensor_scale)
