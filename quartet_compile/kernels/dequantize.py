"""Dequantization of a saved NVFP4 tensor into the exact unscaled operand ``e2m1 * s_b`` of a
high-precision GEMM, optionally transposed: the backward GEMMs that read a saved FP4 tensor
without re-quantizing it (``fp4-forward``'s two, the ``nvidia`` recipe's dgrad).

``e2m1 * s_b`` has at most 6 significant bits and lies in ``[2**-10, 2688]``, so it is exact
in bf16, fp16 and float32; the tensor scale ``s_t`` is applied in the GEMM's epilogue.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..nvfp4.format import BLOCK, NVFP4Tensor
from ..nvfp4.numerics import misaligned
from .configs import config
from .launch import cdiv, run
from .nvfp4_math import e2m1_value, e4m3_value


@triton.jit
def _dequantize_kernel(
    codes_ptr,
    scales_ptr,
    out_ptr,
    rows,
    cols,
    TRANSPOSE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r64 = r.to(tl.int64)[:, None]
    row_ok = (r < rows)[:, None]
    half = tl.program_id(1) * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
    packed = tl.load(codes_ptr + r64 * (cols // 2) + half[None, :], mask=row_ok & (half < cols // 2)[None, :])
    values = tl.reshape(tl.join(e2m1_value(packed & 15), e2m1_value(packed >> 4)), (BLOCK_R, BLOCK_C // 16, 16))
    nb = tl.program_id(1) * (BLOCK_C // 16) + tl.arange(0, BLOCK_C // 16)
    scale_bits = tl.load(scales_ptr + r64 * (cols // 16) + nb[None, :], mask=row_ok & (nb < cols // 16)[None, :])
    out = tl.reshape(values * e4m3_value(scale_bits)[:, :, None], (BLOCK_R, BLOCK_C)).to(out_ptr.dtype.element_ty)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = row_ok & (c < cols)[None, :]
    if TRANSPOSE:
        tl.store(out_ptr + c.to(tl.int64)[None, :] * rows + r64, out, mask=mask)
    else:
        tl.store(out_ptr + r64 * cols + c[None, :], out, mask=mask)


def dequantize_unscaled(q: NVFP4Tensor, *, transpose: bool = False, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """``e2m1 * s_b`` of ``q`` ``[rows, K]`` as a contiguous ``[rows, K]`` tensor, or ``[K, rows]``
    with ``transpose``; ``q.dequantize()`` equals it times ``q.tensor_scale``, bit for bit."""
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"the unscaled operand is exact in bf16, fp16 or float32, not {dtype}")
    rows, cols = q.codes.shape[0], 2 * q.codes.shape[1]
    if misaligned(cols, BLOCK):
        raise ValueError(f"NVFP4 rows hold whole 16-blocks, got {cols} columns")
    out = torch.empty((cols, rows) if transpose else (rows, cols), dtype=dtype, device=q.codes.device)
    if out.numel():
        cfg = config("dequantize", q.codes.device)
        grid = (cdiv(rows, cfg["BLOCK_R"]), cdiv(cols, cfg["BLOCK_C"]))
        run(
            _dequantize_kernel,
            grid,
            q.codes,
            q.scales.view(torch.uint8),
            out,
            rows,
            cols,
            TRANSPOSE=transpose,
            **cfg,
        )
    return out
