"""The NVFP4 GEMM as block-scaled tensor cores compute it: the numbers every GEMM kernel is
compared with."""

from __future__ import annotations

import torch
from torch import Tensor

from ..nvfp4.format import NVFP4Tensor


def nvfp4_matmul(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """``deq(a) @ deq(b)^T [+ bias]``: exact ``e2m1 * scale`` operands, float32 accumulation,
    tensor scales applied once at the end, then the bias in float32 (the GEMM kernels'
    epilogue), then the cast."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"reduction dims differ: {tuple(a.shape)} @ {tuple(b.shape)}^T")
    product = a.dequantize_unscaled() @ b.dequantize_unscaled().T
    product = product * (a.tensor_scale * b.tensor_scale)
    return (product if bias is None else product + bias.float()).to(out_dtype)
