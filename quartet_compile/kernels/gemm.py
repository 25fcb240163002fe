"""NVFP4 GEMM ``C = deq(A) deq(B)^T * (s_A s_B) [+ bias]`` with float32 accumulation.

Three implementations of one product:

* :func:`_dequant_gemm_kernel` (Hopper, any CUDA GPU): dequantizes packed nibbles and E4M3
  scales to bf16 in registers (``e2m1 * s_b`` is exact in bf16) and feeds bf16 ``tl.dot``
  (wgmma). K-permutation: the low nibbles of A and B form one half-K product and the high
  nibbles the other, so no nibble interleaving is needed; both halves use scale ``j // 8``.
* the cuBLAS route: the quantize kernels also write the exact unscaled bf16 operands, cuBLAS
  multiplies them into float32, and one epilogue kernel applies ``s_A s_B``, bias and cast.
* :mod:`.blackwell`: native ``tcgen05.mma ... kind::mxf4nvf4.block_scale`` on sm_100.

All three equal the float64 product of the dequantized operands up to float32 accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..reference.nvfp4 import NVFP4Tensor


@triton.jit
def _e2m1_bf16(nibble):
    """E2M1 code -> exact bf16 by building its bit pattern (no subnormal arithmetic)."""
    n = nibble.to(tl.int32)
    magnitude = n & 7
    bits = tl.where(magnitude >= 2, (magnitude + 252) << 6, magnitude * 0x3F00) | ((n & 8) << 12)
    return bits.to(tl.int16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _dequant_half_k(packed, scales, BLOCK_K: tl.constexpr):
    """``[R, BLOCK_K/2]`` bytes + ``[R, BLOCK_K/16]`` E4M3 bytes -> (low, high) bf16 halves."""
    s = scales.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
    s = tl.reshape(tl.broadcast_to(s[:, :, None], (s.shape[0], BLOCK_K // 16, 8)), (s.shape[0], BLOCK_K // 2))
    return _e2m1_bf16(packed & 15) * s, _e2m1_bf16(packed >> 4) * s


@triton.jit
def scaled_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, stride_cm, HAS_BIAS: tl.constexpr):
    """``(acc * (s_A * s_B) [+ bias]).to(C)`` in the reference's order, masked store."""
    acc = acc * (tl.load(scale_a_ptr) * tl.load(scale_b_ptr))
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
    mask = (m < M)[:, None] & (n < N)[None, :]
    tl.store(c_ptr + m.to(tl.int64)[:, None] * stride_cm + n[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_gemm_kernel(
    a_ptr,
    a_scales_ptr,
    b_ptr,
    b_scales_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_cm,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % size_m)
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_load = tl.where(m < M, m, 0).to(tl.int64)
    n_load = tl.where(n < N, n, 0).to(tl.int64)
    kb = tl.arange(0, BLOCK_K // 2)
    ks = tl.arange(0, BLOCK_K // 16)
    a_rows = a_ptr + m_load[:, None] * (K // 2) + kb[None, :]
    b_rows = b_ptr + n_load[:, None] * (K // 2) + kb[None, :]
    sa_rows = a_scales_ptr + m_load[:, None] * (K // 16) + ks[None, :]
    sb_rows = b_scales_ptr + n_load[:, None] * (K // 16) + ks[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K // BLOCK_K):
        a_lo, a_hi = _dequant_half_k(tl.load(a_rows), tl.load(sa_rows), BLOCK_K)
        b_lo, b_hi = _dequant_half_k(tl.load(b_rows), tl.load(sb_rows), BLOCK_K)
        acc = tl.dot(a_lo, tl.trans(b_lo), acc)
        acc = tl.dot(a_hi, tl.trans(b_hi), acc)
        a_rows += BLOCK_K // 2
        b_rows += BLOCK_K // 2
        sa_rows += BLOCK_K // 16
        sb_rows += BLOCK_K // 16
    scaled_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, stride_cm, HAS_BIAS)


@triton.jit
def _scale_epilogue_kernel(
    acc_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    c_ptr,
    M,
    N,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (m < M)[:, None] & (n < N)[None, :]
    acc = tl.load(acc_ptr + m.to(tl.int64)[:, None] * N + n[None, :], mask=mask, other=0.0)
    scaled_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, N, HAS_BIAS)


DEQUANT_GEMM_CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
"""Tile of the Hopper dequantizing GEMM (chosen with ``bench/kernels.py``)."""

_K_MULTIPLE = DEQUANT_GEMM_CONFIG["BLOCK_K"]


def _output(rows: int, cols: int, like: Tensor, out_dtype: torch.dtype) -> Tensor:
    return torch.empty(rows, cols, dtype=out_dtype, device=like.device)


def dequant_gemm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """The in-kernel-dequantizing Triton GEMM; ``K`` must be a multiple of 128."""
    (m, k), (n, _) = (a.codes.shape[0], 2 * a.codes.shape[1]), b.codes.shape
    if k % _K_MULTIPLE or 2 * b.codes.shape[1] != k:
        raise ValueError(
            f"dequant_gemm needs equal K divisible by {_K_MULTIPLE}, got {tuple(a.shape)} x {tuple(b.shape)}"
        )
    c = _output(m, n, a.codes, out_dtype)
    cfg = DEQUANT_GEMM_CONFIG
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _dequant_gemm_kernel[grid](
        a.codes,
        a.scales.view(torch.uint8),
        b.codes,
        b.scales.view(torch.uint8),
        a.tensor_scale,
        b.tensor_scale,
        bias,
        c,
        m,
        n,
        k,
        c.stride(0),
        HAS_BIAS=bias is not None,
        **cfg,
    )
    return c


def cublas_gemm(
    a_unscaled: Tensor,
    b_unscaled: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    out_dtype: torch.dtype,
    bias: Tensor | None = None,
) -> Tensor:
    """cuBLAS bf16 GEMM of the exact unscaled operands into float32, then one epilogue pass."""
    acc = torch.mm(a_unscaled, b_unscaled.T, out_dtype=torch.float32)
    m, n = acc.shape
    c = _output(m, n, acc, out_dtype)
    grid = (triton.cdiv(m, 64), triton.cdiv(n, 128))
    _scale_epilogue_kernel[grid](
        acc, scale_a, scale_b, bias, c, m, n, HAS_BIAS=bias is not None, BLOCK_M=64, BLOCK_N=128, num_warps=8
    )
    return c
