"""Forward NVFP4 quantization kernels: tensor amax, then RTN or 4/6 per 16-element block
(SPEC sections 1-2), bit-for-bit equal to ``reference.quantizers``.

Two launches: a bandwidth-bound amax reduction (the tensor scale must be known before any
block is rounded), then one pass that writes packed codes, E4M3 scale bytes and, when the
GEMM that follows wants it, the exact unscaled dequantized operand ``e2m1 * s_b`` in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference.formats import E2M1_MAX, E4M3_MAX
from ..reference.nvfp4 import BLOCK, NVFP4Tensor
from ..reference.quantizers import FOUR_OVER_SIX_ALT_FACTOR, FOUR_OVER_SIX_SCALE_MAX
from .nvfp4_math import e2m1_code, e2m1_round, e4m3_bits, e4m3_rne, pack_codes, tensor_scale, tree_sum16

EXACT = {"enable_fp_fusion": False}
"""Launch options of every kernel that must reproduce the reference's float32 rounding."""

AMAX_CONFIG = {"BLOCK_SIZE": 4096, "num_warps": 8}
QUANTIZE_CONFIG = {"BLOCK_R": 32, "BLOCK_C": 128, "num_warps": 4}
"""Tiles of the two forward kernels (chosen with ``bench/kernels.py --tune``)."""


@triton.jit
def _amax_kernel(x_ptr, n, amax_ptr, BLOCK_SIZE: tl.constexpr):
    """``max |x|`` into ``amax_ptr`` (pre-zeroed); NaN counts as +inf so that non-finite
    input yields a NaN tensor scale downstream."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    a = tl.abs(tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32))
    a = tl.where(a == a, a, float("inf"))
    tl.atomic_max(amax_ptr, tl.max(a, axis=0))


def tensor_amax(x: Tensor) -> Tensor:
    """float32 0-d ``max |x|`` (``inf`` if ``x`` holds NaN or Inf), one read of ``x``."""
    x = x.contiguous()
    amax = torch.zeros((), dtype=torch.float32, device=x.device)
    if x.numel():
        grid = (triton.cdiv(x.numel(), AMAX_CONFIG["BLOCK_SIZE"]),)
        _amax_kernel[grid](x, x.numel(), amax, **AMAX_CONFIG)
    return amax


@triton.jit
def _quantize_kernel(
    x_ptr,
    rows,
    cols,
    stride_r,
    stride_c,
    amax_ptr,
    codes_ptr,
    scales_ptr,
    deq_ptr,
    tensor_scale_ptr,
    value_max,
    value_max_times_scale_max,
    alt_factor,
    FOUR_OVER_SIX: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQ: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    r64 = r.to(tl.int64)
    row_ok = r < rows
    mask = row_ok[:, None] & (c < cols)[None, :]
    x = tl.load(x_ptr + r64[:, None] * stride_r + c[None, :] * stride_c, mask=mask, other=0.0).to(tl.float32)

    s_t = tensor_scale(tl.load(amax_ptr), value_max_times_scale_max)
    if pid_r == 0 and pid_c == 0:
        tl.store(tensor_scale_ptr, s_t)

    xb = tl.reshape(x, (BLOCK_R, BLOCK_C // 16, 16))
    target = tl.math.div_rn(tl.max(tl.abs(xb), axis=2), value_max)
    s_b = e4m3_rne(tl.math.div_rn(target, s_t))
    s_b = tl.where(s_b == 0.0, 1.0, s_b)
    u = tl.math.div_rn(xb, (s_b * s_t)[:, :, None])
    q = e2m1_round(u)
    if FOUR_OVER_SIX:
        s_alt = e4m3_rne(tl.math.div_rn(target * alt_factor, s_t))
        s_alt = tl.where(s_alt == 0.0, 1.0, s_alt)
        u_alt = tl.math.div_rn(xb, (s_alt * s_t)[:, :, None])
        q_alt = e2m1_round(u_alt)
        d = tl.reshape((u - q) * s_b[:, :, None], (BLOCK_R, BLOCK_C))
        d_alt = tl.reshape((u_alt - q_alt) * s_alt[:, :, None], (BLOCK_R, BLOCK_C))
        pick_alt = tree_sum16(d_alt * d_alt) < tree_sum16(d * d)
        s_b = tl.where(pick_alt, s_alt, s_b)
        q = tl.where(pick_alt[:, :, None], q_alt, q)
    code = e2m1_code(q)

    if STORE_CODES:
        half = pid_c * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
        packed = pack_codes(tl.reshape(code, (BLOCK_R, BLOCK_C)))
        tl.store(
            codes_ptr + r64[:, None] * (cols // 2) + half[None, :],
            packed,
            mask=row_ok[:, None] & (half < cols // 2)[None, :],
        )
        blocks = pid_c * (BLOCK_C // 16) + tl.arange(0, BLOCK_C // 16)
        tl.store(
            scales_ptr + r64[:, None] * (cols // 16) + blocks[None, :],
            e4m3_bits(s_b),
            mask=row_ok[:, None] & (blocks < cols // 16)[None, :],
        )
    if STORE_DEQ:
        deq = tl.reshape(q * s_b[:, :, None], (BLOCK_R, BLOCK_C))
        tl.store(deq_ptr + r64[:, None] * cols + c[None, :], deq.to(tl.bfloat16), mask=mask)


@dataclass(frozen=True)
class Quantized:
    """A kernel's NVFP4 result: the container (``None`` when codes were not asked for) and/or
    the exact unscaled dequantized operand ``e2m1 * s_b`` in bf16 for a bf16 GEMM."""

    fp4: NVFP4Tensor | None
    unscaled_bf16: Tensor | None
    tensor_scale: Tensor


def _check_last_dim(x: Tensor, multiple: int) -> None:
    if x.dim() != 2 or x.shape[1] % multiple:
        raise ValueError(
            f"NVFP4 kernels quantize 2-D tensors along a last dimension divisible by {multiple}, "
            f"got shape {tuple(x.shape)}"
        )


def quantize(
    x: Tensor,
    *,
    four_over_six: bool = False,
    codes: bool = True,
    unscaled_bf16: bool = False,
) -> Quantized:
    """RTN ("6") or 4/6 NVFP4 quantization of a 2-D CUDA tensor (any strides) along its last
    dimension; the numbers of ``reference.quantize_rtn`` / ``quantize_four_over_six``."""
    _check_last_dim(x, BLOCK)
    rows, cols = x.shape
    scale_max = FOUR_OVER_SIX_SCALE_MAX if four_over_six else E4M3_MAX
    out_codes = x.new_empty(rows, cols // 2, dtype=torch.uint8) if codes else None
    out_scales = x.new_empty(rows, cols // BLOCK, dtype=torch.uint8) if codes else None
    deq = x.new_empty(rows, cols, dtype=torch.bfloat16) if unscaled_bf16 else None
    s_t = x.new_empty((), dtype=torch.float32)
    amax = tensor_amax(x)
    if x.numel():
        grid = (triton.cdiv(rows, QUANTIZE_CONFIG["BLOCK_R"]), triton.cdiv(cols, QUANTIZE_CONFIG["BLOCK_C"]))
        _quantize_kernel[grid](
            x,
            rows,
            cols,
            x.stride(0),
            x.stride(1),
            amax,
            out_codes,
            out_scales,
            deq,
            s_t,
            E2M1_MAX,
            E2M1_MAX * scale_max,
            FOUR_OVER_SIX_ALT_FACTOR,
            FOUR_OVER_SIX=four_over_six,
            STORE_CODES=codes,
            STORE_DEQ=unscaled_bf16,
            **QUANTIZE_CONFIG,
            **EXACT,
        )
    else:
        s_t.fill_(1.0)
    fp4 = None
    if codes:
        fp4 = NVFP4Tensor(out_codes, out_scales.view(torch.float8_e4m3fn), s_t, x.shape, x.dtype)
    return Quantized(fp4, deq, s_t)
