"""Backward quantization kernel: 128-point random Hadamard transform + MS-EDEN (SPEC 3).

The operand of a backward GEMM is quantized along that GEMM's reduction dimension. It is
read either from a dense tensor with arbitrary strides (so ``g^T`` for the weight gradient
is a strided read, never a materialised transpose) or from a saved FP4 tensor, dequantized
and transposed in registers (the re-quantization of SPEC 4, with no bf16 round trip
through memory).

The rotation is one tensor-core product per 128-column group (:mod:`.rotation`); everything
after it is bit-for-bit the reference's ``quantize_ms_eden_rotated``
given the same rotated tensor and the same uniforms (tested with ``debug`` outputs).

The tensor scale needs the amax of the *rotated* tensor, so the kernel runs twice: an amax
pass and a quantize pass that recomputes the (cheap) rotation instead of storing it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..nvfp4.format import BLOCK, E2M1_MAX, NVFP4Tensor
from ..nvfp4.numerics import EDEN_GROUP, MS_EDEN_SCALE_MAX, MS_EDEN_SCALE_OVERRIDE, misaligned
from .configs import config
from .launch import cdiv
from .nvfp4_math import (
    accumulate_stats,
    block_scale,
    block_target,
    e2m1_value,
    e4m3_sr,
    e4m3_value,
    fast_division_ok,
    mul_rn,
    published_tensor_scale,
    round_half_block,
    store_half_blocks,
    tree_sum8,
)
from .quantize import Outputs, Quantized, stats_scratch, two_passes
from .rotation import SPLITS, dot_split

INV_SQRT_GROUP = tl.constexpr(1.0 / math.sqrt(EDEN_GROUP))


@triton.jit
def _rotated_tile(
    src_ptr,
    src_scales_ptr,
    src_tensor_scale_ptr,
    rotation_ptr,
    stride_rot_k,
    stride_rot_n,
    r,
    row_ok,
    c0,
    rows,
    stride_r,
    stride_c,
    PACKED: tl.constexpr,
    SPLITS: tl.constexpr,
    EMULATED: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """float32 ``[BLOCK_R, 128]``: rows ``r`` of the operand, columns ``c0 .. c0+128``, rotated."""
    g = tl.arange(0, 128)
    rotation = tl.load(rotation_ptr + g[:, None] * stride_rot_k + _accumulator_order(g)[None, :] * stride_rot_n)
    if PACKED:
        # Operand[r, c] = deq(Q)[c, r] for a saved Q of shape [cols, rows] quantized along rows.
        cq = (c0 + g).to(tl.int64)
        r0 = tl.program_id(0) * BLOCK_R
        half = r0 // 2 + tl.arange(0, BLOCK_R // 2)
        packed = tl.load(src_ptr + cq[:, None] * (rows // 2) + half[None, :], mask=(half < rows // 2)[None, :], other=0)
        codes = tl.reshape(tl.join(packed & 15, packed >> 4), (128, BLOCK_R))
        nb = r0 // 16 + tl.arange(0, BLOCK_R // 16)
        scale_bits = tl.load(
            src_scales_ptr + cq[:, None] * (rows // 16) + nb[None, :], mask=(nb < rows // 16)[None, :], other=0
        )
        values = tl.reshape(e2m1_value(codes), (128, BLOCK_R // 16, 16)) * e4m3_value(scale_bits)[:, :, None]
        tile = tl.trans(tl.reshape(values, (128, BLOCK_R))).to(tl.bfloat16)
        acc = dot_split(tile, rotation, 1, EMULATED)
        return acc * (INV_SQRT_GROUP * tl.load(src_tensor_scale_ptr))
    c = c0 + g
    x = tl.load(src_ptr + r.to(tl.int64)[:, None] * stride_r + c[None, :] * stride_c, mask=row_ok[:, None], other=0.0)
    return dot_split(x, rotation, SPLITS, EMULATED) * INV_SQRT_GROUP


@triton.jit
def _accumulator_order(p):
    """The rotated column that accumulator column ``p`` holds. A Hopper wgmma (or mma.sync)
    accumulator gives each thread the columns ``8j + 2t + e`` (``j < 16``, ``t = lane % 4``,
    ``e < 2``); loading the rotation's columns so that ``p = 64 jh + 8 jl + 2t + e`` holds
    element ``8e + jl`` of block ``2t + jh`` puts every 16-block of the product in one thread,
    and the block passes need neither shuffles nor a shared-memory layout conversion. Each
    column's sum is the same whatever its position."""
    return 16 * (2 * ((p >> 1) & 3) + (p >> 6)) + 8 * (p & 1) + ((p >> 3) & 7)


@triton.jit
def _halves(t):
    """Accumulator columns ``[R, 128]`` in :func:`_accumulator_order` -> the first and second
    eight elements of each 16-block, ``[R, 8, 8]`` each, in block order."""
    blocks = tl.reshape(tl.permute(tl.reshape(t, (t.shape[0], 2, 8, 4, 2)), (0, 3, 1, 2, 4)), (t.shape[0], 8, 8, 2))
    return tl.split(blocks)


@triton.jit
def _block_uniforms(seed, r, group, cols):
    """One uniform per block of a 128-group, ``[R, 8]``: block ``b`` of the tensor's row-major
    block order takes output ``b % 4`` of Philox at offset ``b // 4`` (one draw of four per
    four blocks)."""
    quads = (r[:, None] * (cols // 64) + group * 2 + tl.arange(0, 2)[None, :]).to(tl.uint32)
    u0, u1, u2, u3 = tl.rand4x(seed, quads)
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (r.shape[0], 8))


@triton.jit
def _eden_blocks(lo, hi, s_t, value_max, uniforms, FAST: tl.constexpr):
    """MS-EDEN of one group of 128 per row, as half-blocks ``[R, 8, 8]``: RTN with headroom,
    the EDEN correction ``<u,u>/<u,q>`` over the group folded into the block scales, which are
    then rounded to E4M3 with ``uniforms`` ``[R, 8]``."""
    target = block_target(lo, hi, value_max, FAST)
    s_b, d, inv_d = block_scale(target, s_t, tl.math.div_rn(1.0, s_t), FAST)
    u_lo, q_lo, code_lo = round_half_block(lo, d, inv_d, FAST)
    u_hi, q_hi, code_hi = round_half_block(hi, d, inv_d, FAST)
    numerator = tree_sum8(tree_sum8(mul_rn(u_lo, u_lo)) + tree_sum8(mul_rn(u_hi, u_hi)))
    denominator = tree_sum8(tree_sum8(mul_rn(u_lo, q_lo)) + tree_sum8(mul_rn(u_hi, q_hi)))
    safe = tl.where(denominator == 0.0, 1.0, denominator)
    correction = tl.where(denominator == 0.0, 1.0, tl.math.div_rn(numerator, safe))
    s_b = e4m3_sr(s_b * correction[:, None], uniforms)
    return s_b, q_lo, q_hi, code_lo, code_hi


@triton.jit
def _ms_eden_kernel(
    src_ptr,
    src_scales_ptr,
    src_tensor_scale_ptr,
    rotation_ptr,
    stride_rot_k,
    stride_rot_n,
    rows,
    cols,
    stride_r,
    stride_c,
    stats_ptr,
    stats_row,
    seed_ptr,
    codes_ptr,
    scales_ptr,
    deq_ptr,
    tensor_scale_ptr,
    rotated_ptr,
    uniforms_ptr,
    value_max,
    value_max_times_scale_max,
    AMAX_PASS: tl.constexpr,
    PACKED: tl.constexpr,
    SPLITS: tl.constexpr,
    EMULATED: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQ: tl.constexpr,
    DEBUG: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    stats_ptr += 2 * stats_row
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = r < rows
    c0 = tl.program_id(1) * 128
    rot = _rotated_tile(
        src_ptr,
        src_scales_ptr,
        src_tensor_scale_ptr,
        rotation_ptr,
        stride_rot_k,
        stride_rot_n,
        r,
        row_ok,
        c0,
        rows,
        stride_r,
        stride_c,
        PACKED,
        SPLITS,
        EMULATED,
        BLOCK_R,
    )
    if AMAX_PASS:
        accumulate_stats(rot, stats_ptr)
        return

    s_t = published_tensor_scale(stats_ptr, value_max_times_scale_max, tensor_scale_ptr)
    lo, hi = _halves(rot)
    blocks = c0 // 16 + tl.arange(0, 8)
    uniforms = _block_uniforms(tl.load(seed_ptr), r, tl.program_id(1), cols)
    if fast_division_ok(stats_ptr, s_t):
        s_b, q_lo, q_hi, code_lo, code_hi = _eden_blocks(lo, hi, s_t, value_max, uniforms, True)
    else:
        s_b, q_lo, q_hi, code_lo, code_hi = _eden_blocks(lo, hi, s_t, value_max, uniforms, False)

    mask = tl.broadcast_to(row_ok[:, None], (BLOCK_R, 8))
    if DEBUG:
        c = c0 + tl.arange(0, 8)[None, :, None] * 16 + tl.arange(0, 8)[None, None, :]
        rotated_ptrs = rotated_ptr + r.to(tl.int64)[:, None, None] * cols + c
        tl.store(rotated_ptrs, lo, mask=mask[:, :, None])
        tl.store(rotated_ptrs + 8, hi, mask=mask[:, :, None])
        tl.store(uniforms_ptr + r.to(tl.int64)[:, None] * (cols // 16) + blocks[None, :], uniforms, mask=mask)
    store_half_blocks(
        codes_ptr,
        scales_ptr,
        deq_ptr,
        r,
        blocks,
        cols,
        mask,
        s_b,
        q_lo,
        q_hi,
        code_lo,
        code_hi,
        STORE_CODES,
        STORE_DEQ,
    )


def ms_eden(
    operand: Tensor | NVFP4Tensor,
    rotation: Tensor,
    seed: Tensor,
    *,
    transpose: bool = False,
    codes: bool = True,
    unscaled_bf16: bool = False,
    debug: dict[str, Tensor] | None = None,
    stats: Tensor | None = None,
    stats_row: int = 0,
) -> Quantized:
    """MS-EDEN of ``operand`` (or of ``operand.T`` with ``transpose``) along its last dim.

    ``operand``: a 2-D CUDA tensor, or a saved :class:`NVFP4Tensor` ``[rows, K]`` whose
    dequantized transpose ``[K, rows]`` is quantized (``transpose`` must then be true).
    ``seed``: int64 0-d device tensor for the Philox stream of the scale rounding (one draw
    per block: block ``b = row * (cols/16) + column/16`` takes output ``b % 4`` of the draw at
    offset ``b // 4``). ``debug``: filled with the kernel's
    ``rotated`` tensor and ``uniforms`` for bit-exact comparison with the reference.
    ``stats``, ``stats_row``: a row of a zeroed :func:`.quantize.stats_scratch` for the amax
    pass, so that a caller quantizing several operands zeroes one buffer for all of them.
    """
    packed = isinstance(operand, NVFP4Tensor)
    if packed:
        if not transpose:
            raise ValueError("a saved FP4 operand is re-quantized along its rows: pass transpose=True")
        cols, rows = operand.codes.shape[0], 2 * operand.codes.shape[1]
        device, src, strides = operand.codes.device, operand.codes, (0, 0)
        splits = 1
    else:
        src = operand.T if transpose else operand
        rows, cols = src.shape
        device, strides = src.device, (src.stride(0), src.stride(1))
        splits = SPLITS[src.dtype]
    if misaligned(cols, EDEN_GROUP) or misaligned(rows, BLOCK):
        raise ValueError(f"MS-EDEN needs [rows % 16, cols % 128] == 0, got [{rows}, {cols}]")
    out = Outputs.allocate(rows, cols, device, codes=codes, unscaled_bf16=unscaled_bf16)
    rotated, uniforms = out.debug_buffers(debug, cols // BLOCK)
    if stats is None:
        stats = stats_scratch(1, device)
    value_max = E2M1_MAX / MS_EDEN_SCALE_OVERRIDE
    cfg = config("ms_eden", device)
    args = (
        src,
        operand.scales.view(torch.uint8) if packed else None,
        operand.tensor_scale if packed else None,
        rotation,
        *rotation.stride(),
        rows,
        cols,
        *strides,
        stats,
        stats_row,
        seed,
        out.codes,
        out.scales,
        out.unscaled_bf16,
        out.tensor_scale,
        rotated,
        uniforms,
        value_max,
        value_max * MS_EDEN_SCALE_MAX,
    )
    constexprs = {
        "PACKED": packed,
        "SPLITS": splits,
        "EMULATED": device.type != "cuda",
        "STORE_CODES": codes,
        "STORE_DEQ": unscaled_bf16,
        "DEBUG": debug is not None,
        **cfg,
    }
    two_passes(_ms_eden_kernel, (cdiv(rows, cfg["BLOCK_R"]), cols // EDEN_GROUP), args, constexprs)
    return out.result(torch.Size((rows, cols)), torch.float32)
