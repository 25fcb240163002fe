"""Backward quantizers of the ``nvidia`` recipe (SPEC 5): E2M1 stochastic rounding of the
gradient with RTN E4M3 scales (the reference's ``quantize_sr``), and for the weight gradient a
16-point random Hadamard transform along the tokens first, of the gradient (then SR) and of
the saved activation (then RTN, ``quantize_rtn``).

Like :mod:`.ms_eden`, the operand is read with arbitrary strides (``g^T`` and ``x^T`` are
strided reads, never materialised transposes), and the tensor scale needs the amax of the
rotated tensor, so the kernel runs twice: an amax pass, then a quantize pass that recomputes
the rotation. Everything after the rotation is bit-for-bit the reference fed the kernel's
rotated tensor and uniforms (``debug`` outputs).

SR draws one uniform per element: element ``i`` of the row-major operand takes output
``i % 4`` of Philox at offset ``i // 4`` (as uint32, so the stream repeats only past 2**34
elements).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ..nvfp4.format import BLOCK, E2M1_MAX, E4M3_MAX
from ..nvfp4.numerics import NVIDIA_RHT_SIZE, SR_SCALE_OVERRIDE, misaligned
from .configs import config
from .launch import cdiv
from .nvfp4_math import (
    accumulate_stats,
    block_scale,
    block_target,
    divide,
    e2m1_sr,
    fast_division_ok,
    published_tensor_scale,
    round_half_block,
    store_half_blocks,
)
from .quantize import Outputs, Quantized, stats_scratch, two_passes
from .rotation import SPLITS, dot_split


@triton.jit
def _tile(
    src_ptr,
    rotation_ptr,
    stride_rot_k,
    stride_rot_n,
    r,
    blocks,
    rows,
    cols,
    stride_r,
    stride_c,
    ROTATE: tl.constexpr,
    SPLITS: tl.constexpr,
    EMULATED: tl.constexpr,
):
    """float32 ``[R, NB, 16]``: rows ``r`` and 16-blocks ``blocks`` of the operand, each block
    rotated by ``D H / 4`` when ROTATE."""
    c = blocks[None, :, None] * 16 + tl.arange(0, 16)[None, None, :]
    ptrs = src_ptr + r.to(tl.int64)[:, None, None] * stride_r + c * stride_c
    mask = (r < rows)[:, None, None] & (blocks < cols // 16)[None, :, None]
    x = tl.load(ptrs, mask=mask, other=0.0)
    if ROTATE:
        k = tl.arange(0, 16)
        rotation = tl.load(rotation_ptr + k[:, None] * stride_rot_k + k[None, :] * stride_rot_n)
        flat = tl.reshape(x, (x.shape[0] * x.shape[1], 16))
        return tl.reshape(dot_split(flat, rotation, SPLITS, EMULATED), x.shape) * 0.25
    return x.to(tl.float32)


@triton.jit
def _element_uniforms(seed, r, blocks, cols):
    """One uniform per element of the halves ``[R, NB, 8]`` (element ``i = row * cols + col``
    takes output ``i % 4`` of Philox at offset ``i // 4``)."""
    first = r.to(tl.int64)[:, None] * cols + blocks[None, :] * 16
    quads = (first[:, :, None] // 4 + tl.arange(0, 4)[None, None, :]).to(tl.uint32)
    u0, u1, u2, u3 = tl.rand4x(seed, quads)
    elements = tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (r.shape[0], blocks.shape[0], 16))
    return tl.split(tl.permute(tl.reshape(elements, (r.shape[0], blocks.shape[0], 2, 8)), (0, 1, 3, 2)))


@triton.jit
def _blocks16(lo, hi, s_t, value_max, u_lo, u_hi, STOCHASTIC: tl.constexpr, FAST: tl.constexpr):
    """RTN E4M3 block scales, then E2M1 SR with ``u_lo``, ``u_hi`` (STOCHASTIC) or RTN."""
    target = block_target(lo, hi, value_max, FAST)
    s_b, d, inv_d = block_scale(target, s_t, tl.math.div_rn(1.0, s_t), FAST)
    if STOCHASTIC:
        q_lo, code_lo = e2m1_sr(divide(lo, d[:, :, None], inv_d[:, :, None], FAST), u_lo)
        q_hi, code_hi = e2m1_sr(divide(hi, d[:, :, None], inv_d[:, :, None], FAST), u_hi)
    else:
        _, q_lo, code_lo = round_half_block(lo, d, inv_d, FAST)
        _, q_hi, code_hi = round_half_block(hi, d, inv_d, FAST)
    return s_b, q_lo, q_hi, code_lo, code_hi


@triton.jit
def _nvidia_kernel(
    src_ptr,
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
    ROTATE: tl.constexpr,
    STOCHASTIC: tl.constexpr,
    SPLITS: tl.constexpr,
    EMULATED: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQ: tl.constexpr,
    DEBUG: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    stats_ptr += 2 * stats_row
    NB: tl.constexpr = BLOCK_C // 16
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    blocks = tl.program_id(1) * NB + tl.arange(0, NB)
    x = _tile(
        src_ptr,
        rotation_ptr,
        stride_rot_k,
        stride_rot_n,
        r,
        blocks,
        rows,
        cols,
        stride_r,
        stride_c,
        ROTATE,
        SPLITS,
        EMULATED,
    )
    if AMAX_PASS:
        accumulate_stats(x, stats_ptr)
        return

    s_t = published_tensor_scale(
        stats_ptr, value_max_times_scale_max, tensor_scale_ptr, (tl.program_id(0) == 0) & (tl.program_id(1) == 0)
    )
    lo, hi = tl.split(tl.permute(tl.reshape(x, (BLOCK_R, NB, 2, 8)), (0, 1, 3, 2)))
    if STOCHASTIC:
        u_lo, u_hi = _element_uniforms(tl.load(seed_ptr), r, blocks, cols)
    else:
        u_lo, u_hi = lo, hi
    if fast_division_ok(stats_ptr, s_t):
        s_b, q_lo, q_hi, code_lo, code_hi = _blocks16(lo, hi, s_t, value_max, u_lo, u_hi, STOCHASTIC, True)
    else:
        s_b, q_lo, q_hi, code_lo, code_hi = _blocks16(lo, hi, s_t, value_max, u_lo, u_hi, STOCHASTIC, False)

    mask = (r < rows)[:, None] & (blocks < cols // 16)[None, :]
    if DEBUG:
        c = blocks[None, :, None] * 16 + tl.arange(0, 8)[None, None, :]
        offsets = r.to(tl.int64)[:, None, None] * cols + c
        tl.store(rotated_ptr + offsets, lo, mask=mask[:, :, None])
        tl.store(rotated_ptr + offsets + 8, hi, mask=mask[:, :, None])
        if STOCHASTIC:
            tl.store(uniforms_ptr + offsets, u_lo, mask=mask[:, :, None])
            tl.store(uniforms_ptr + offsets + 8, u_hi, mask=mask[:, :, None])
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


def nvidia_quantize(
    operand: Tensor,
    *,
    seed: Tensor | None,
    rotation: Tensor | None = None,
    transpose: bool = False,
    codes: bool = True,
    unscaled_bf16: bool = False,
    debug: dict[str, Tensor] | None = None,
    stats: Tensor | None = None,
    stats_row: int = 0,
) -> Quantized:
    """NVFP4 of ``operand`` (or ``operand.T`` with ``transpose``, a strided read) along its last
    dimension, rotated first by ``rotation`` (a ``[16, 16]`` ``D H`` from :mod:`.rotation`) on
    every group of 16 when given: E2M1 SR with the 17/16 scale headroom when ``seed`` (an
    int64 0-d device tensor) is given, else RTN. ``debug``: filled with the kernel's
    ``rotated`` tensor and SR ``uniforms``. ``stats``, ``stats_row``: a row of a zeroed
    :func:`.quantize.stats_scratch` for the amax pass."""
    src = operand.T if transpose else operand
    if src.dim() != 2 or misaligned(src.shape[1], BLOCK):
        raise ValueError(f"the nvidia quantizers need a 2-D operand with cols % 16 == 0, got {tuple(src.shape)}")
    if rotation is not None and rotation.shape != (NVIDIA_RHT_SIZE, NVIDIA_RHT_SIZE):
        raise ValueError(
            f"the nvidia recipe rotates groups of {NVIDIA_RHT_SIZE}, got a {tuple(rotation.shape)} rotation"
        )
    rows, cols = src.shape
    device = src.device
    stochastic = seed is not None
    out = Outputs.allocate(rows, cols, device, codes=codes, unscaled_bf16=unscaled_bf16)
    rotated, uniforms = out.debug_buffers(debug, cols if stochastic else None)
    if stats is None:
        stats = stats_scratch(1, device)
    if not src.numel():
        out.tensor_scale.fill_(1.0)
        return out.result(src.shape, src.dtype)
    value_max = E2M1_MAX / SR_SCALE_OVERRIDE if stochastic else E2M1_MAX
    cfg = config("nvidia", device)
    args = (
        src,
        rotation,
        *(rotation.stride() if rotation is not None else (0, 0)),
        rows,
        cols,
        *src.stride(),
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
        value_max * E4M3_MAX,
    )
    constexprs = {
        "ROTATE": rotation is not None,
        "STOCHASTIC": stochastic,
        "SPLITS": SPLITS[src.dtype],
        "EMULATED": device.type != "cuda",
        "STORE_CODES": codes,
        "STORE_DEQ": unscaled_bf16,
        "DEBUG": debug is not None,
        **cfg,
    }
    two_passes(_nvidia_kernel, (cdiv(rows, cfg["BLOCK_R"]), cdiv(cols, cfg["BLOCK_C"])), args, constexprs)
    return out.result(src.shape, src.dtype)
