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
pass and a quantize pass that recomputes the (cheap) rotation instead of storing it. The amax
pass reads the gradient once for both backward GEMMs, rotating each tile along both axes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..nvfp4.format import BLOCK, E2M1_MAX, NVFP4Tensor
from ..nvfp4.numerics import EDEN_GROUP, MS_EDEN_SCALE_MAX, MS_EDEN_SCALE_OVERRIDE, misaligned
from .configs import config, multiprocessors
from .launch import cdiv, run
from .nvfp4_math import (
    block_scale,
    block_target,
    e2m1_value,
    e4m3_sr,
    e4m3_value,
    fast_division_ok,
    magnitude_bits,
    mul_rn,
    publish_stats,
    published_tensor_scale,
    round_half_block,
    store_half_blocks,
    tree_sum8,
)
from .quantize import EXACT, Outputs, Quantized, stats_scratch
from .rotation import SPLITS, dot_split

INV_SQRT_GROUP = tl.constexpr(1.0 / math.sqrt(EDEN_GROUP))
EDEN_TILE = tl.constexpr(EDEN_GROUP)


@triton.jit
def _rotated_tile(
    src_ptr,
    src_scales_ptr,
    src_tensor_scale,
    rotation,
    r0,
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
    """float32 ``[BLOCK_R, 128]``: rows ``r = r0 .. r0+BLOCK_R`` of the operand, columns
    ``c0 .. c0+128``, times ``rotation`` (bf16, its columns in accumulator order);
    ``src_tensor_scale``: the saved tensor's, for PACKED."""
    g = tl.arange(0, 128)
    if PACKED:
        # Operand[r, c] = deq(Q)[c, r] for a saved Q of shape [cols, rows] quantized along rows.
        cq = (c0 + g).to(tl.int64)
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
        return acc * (INV_SQRT_GROUP * src_tensor_scale)
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
def _twin_amax_program(
    p,
    src_ptr,
    rows,
    stride_r,
    stride_c,
    stats_ptr,
    twin_stats_ptr,
    rotation,
    SPLITS: tl.constexpr,
    EMULATED: tl.constexpr,
):
    """Amax pass of an operand and of its transpose (``g`` for dgrad and ``g^T`` for wgrad, each
    rotated along its rows) from one read: program ``p`` takes one 128 x 128 tile (consecutive
    programs walk down a 128-column group) and rotates it along both axes, the transpose being
    another tensor-core product of the same tile. Each rotated element is the sum the quantize
    pass recomputes from its own tile (same operands, same reduction), so the maxima are its.
    One tile per program: looping over several, Triton 3.6 compiled the launch to more registers
    than two programs per SM allow."""
    tiles = tl.cdiv(rows, EDEN_TILE)
    g = tl.arange(0, EDEN_TILE)
    r = p % tiles * EDEN_TILE + g
    c = p // tiles * EDEN_TILE + g
    x = tl.load(
        src_ptr + r.to(tl.int64)[:, None] * stride_r + c[None, :] * stride_c, mask=(r < rows)[:, None], other=0.0
    )
    bits, below = magnitude_bits(dot_split(x, rotation, SPLITS, EMULATED) * INV_SQRT_GROUP)
    publish_stats(bits, below, stats_ptr)
    bits, below = magnitude_bits(dot_split(tl.trans(x), rotation, SPLITS, EMULATED) * INV_SQRT_GROUP)
    publish_stats(bits, below, twin_stats_ptr)


@triton.jit
def _ms_eden_program(
    p,
    src_ptr,
    src_scales_ptr,
    src_tensor_scale_ptr,
    rows,
    cols,
    stride_r,
    stride_c,
    stats_row,
    seed_ptr,
    codes_ptr,
    scales_ptr,
    deq_ptr,
    tensor_scale_ptr,
    rotated_ptr,
    uniforms_ptr,
    stats_ptr,
    rotation,
    value_max,
    value_max_times_scale_max,
    AMAX_PASS: tl.constexpr,
    PACKED: tl.constexpr,
    SPLITS: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQ: tl.constexpr,
    EMULATED: tl.constexpr,
    DEBUG: tl.constexpr,
    BLOCK_R: tl.constexpr,
    TILES: tl.constexpr,
):
    """Program ``p`` of one operand's pass: ``TILES`` consecutive row tiles of ``BLOCK_R`` rows
    of its 128-column group ``group`` (consecutive programs take consecutive tiles of one
    group), so that the rotation it loaded serves several tiles. The amax pass folds its tiles'
    statistics into per-row extremes and publishes them once, after the last tile. The tensor
    scale, the fast-division flag and a saved operand's tensor scale are loaded once, before
    the first tile: inside the loop, where the tiles' stores may alias them, each tile waited
    on their loads. The seed stays a per-tile load (issued ahead of the tile's product): held
    across the loop it raised the quantize pass from 128 to 172 registers (Triton 3.6)."""
    chunks = tl.cdiv(tl.cdiv(rows, BLOCK_R), TILES)
    group = p // chunks
    stats_ptr += 2 * stats_row
    src_tensor_scale = 1.0
    if PACKED:
        src_tensor_scale = tl.load(src_tensor_scale_ptr)
    if AMAX_PASS:
        top = tl.zeros([BLOCK_R], dtype=tl.int32)
        below = tl.full([BLOCK_R], 0xFFFFFFFF, dtype=tl.uint32)
    else:
        s_t = published_tensor_scale(stats_ptr, value_max_times_scale_max, tensor_scale_ptr, p == 0)
        fast = fast_division_ok(stats_ptr, s_t)
    for t in tl.range(0, TILES):
        r0 = (p % chunks * TILES + t) * BLOCK_R
        r = r0 + tl.arange(0, BLOCK_R)
        row_ok = r < rows
        c0 = group * 128
        rot = _rotated_tile(
            src_ptr,
            src_scales_ptr,
            src_tensor_scale,
            rotation,
            r0,
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
            tile_bits, tile_below = magnitude_bits(rot)
            top = tl.maximum(top, tl.max(tile_bits, axis=1))
            below = tl.minimum(below, tl.min(tile_below, axis=1))
        else:
            lo, hi = _halves(rot)
            blocks = c0 // 16 + tl.arange(0, 8)
            uniforms = _block_uniforms(tl.load(seed_ptr), r, group, cols)
            if fast:
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
    if AMAX_PASS:
        publish_stats(top, below, stats_ptr)


SLOT_ARGS = 12
"""Runtime arguments of one operand (slot) of :func:`_ms_eden_kernel`, in order: the source, its
E4M3 scales and tensor scale (a saved FP4 source), rows, columns, the two strides, the seed, and
the four outputs (codes, scales, bf16 operand, tensor scale)."""

MAX_SLOTS = 4
"""Operands one launch of :func:`_ms_eden_kernel` takes: both operands of both backward GEMMs."""


# fmt: off
@triton.jit
def _ms_eden_kernel(
    rotation_ptr, stride_rot_k, stride_rot_n, stats_ptr, stats_row, rotated_ptr, uniforms_ptr,
    value_max, value_max_times_scale_max,
    a_src_ptr, a_src_scales_ptr, a_src_tensor_scale_ptr, a_rows, a_cols, a_stride_r, a_stride_c,
    a_seed_ptr, a_codes_ptr, a_scales_ptr, a_deq_ptr, a_tensor_scale_ptr, a_end,
    b_src_ptr, b_src_scales_ptr, b_src_tensor_scale_ptr, b_rows, b_cols, b_stride_r, b_stride_c,
    b_seed_ptr, b_codes_ptr, b_scales_ptr, b_deq_ptr, b_tensor_scale_ptr, b_end,
    c_src_ptr, c_src_scales_ptr, c_src_tensor_scale_ptr, c_rows, c_cols, c_stride_r, c_stride_c,
    c_seed_ptr, c_codes_ptr, c_scales_ptr, c_deq_ptr, c_tensor_scale_ptr, c_end,
    d_src_ptr, d_src_scales_ptr, d_src_tensor_scale_ptr, d_rows, d_cols, d_stride_r, d_stride_c,
    d_seed_ptr, d_codes_ptr, d_scales_ptr, d_deq_ptr, d_tensor_scale_ptr,
    AMAX_PASS: tl.constexpr,
    A_PACKED: tl.constexpr, A_SPLITS: tl.constexpr, A_STORE_CODES: tl.constexpr, A_STORE_DEQ: tl.constexpr,
    A_ROW: tl.constexpr,
    B_PACKED: tl.constexpr, B_SPLITS: tl.constexpr, B_STORE_CODES: tl.constexpr, B_STORE_DEQ: tl.constexpr,
    B_ROW: tl.constexpr,
    C_PACKED: tl.constexpr, C_SPLITS: tl.constexpr, C_STORE_CODES: tl.constexpr, C_STORE_DEQ: tl.constexpr,
    C_ROW: tl.constexpr,
    D_PACKED: tl.constexpr, D_SPLITS: tl.constexpr, D_STORE_CODES: tl.constexpr, D_STORE_DEQ: tl.constexpr,
    D_ROW: tl.constexpr,
    TWIN_ROW: tl.constexpr, SLOTS: tl.constexpr, EMULATED: tl.constexpr, DEBUG: tl.constexpr,
    BLOCK_R: tl.constexpr, TILES: tl.constexpr,
):
    """One pass over up to four operands (``SLOTS``) in one launch, both backward GEMMs' operands:
    programs below ``a_end`` take operand ``a`` (amax row ``stats_row + A_ROW``), the next ones up
    to ``b_end`` operand ``b`` (row ``stats_row + B_ROW``), and so on. With ``TWIN_ROW`` (an amax
    pass only) operand ``a`` also stands for its transpose, whose amax goes to row ``stats_row +
    TWIN_ROW`` (:func:`_twin_amax_program`). Each program loads the rotation (columns in
    accumulator order). The slots are an ``if``/``else`` chain: with an independent condition per
    slot (``p >= a_end and p < b_end``), Triton 3.6 and 3.9 compiled the quantize pass over two
    slots with two or more row tiles to 168 registers instead of 128, one program per SM instead
    of two."""
    g = tl.arange(0, 128)
    rotation = tl.load(rotation_ptr + g[:, None] * stride_rot_k + _accumulator_order(g)[None, :] * stride_rot_n)
    p = tl.program_id(0)
    if p < a_end:
        if TWIN_ROW is not None:
            _twin_amax_program(p, a_src_ptr, a_rows, a_stride_r, a_stride_c, stats_ptr + 2 * (stats_row + A_ROW),
                               stats_ptr + 2 * (stats_row + TWIN_ROW), rotation, A_SPLITS, EMULATED)
        else:
            _ms_eden_program(p, a_src_ptr, a_src_scales_ptr, a_src_tensor_scale_ptr, a_rows, a_cols, a_stride_r,
                             a_stride_c, stats_row + A_ROW, a_seed_ptr, a_codes_ptr, a_scales_ptr, a_deq_ptr,
                             a_tensor_scale_ptr, rotated_ptr, uniforms_ptr, stats_ptr, rotation, value_max,
                             value_max_times_scale_max, AMAX_PASS, A_PACKED, A_SPLITS, A_STORE_CODES, A_STORE_DEQ,
                             EMULATED, DEBUG, BLOCK_R, TILES)
    elif SLOTS > 1:
        if p < b_end:
            _ms_eden_program(p - a_end, b_src_ptr, b_src_scales_ptr, b_src_tensor_scale_ptr, b_rows, b_cols,
                             b_stride_r, b_stride_c, stats_row + B_ROW, b_seed_ptr, b_codes_ptr, b_scales_ptr,
                             b_deq_ptr, b_tensor_scale_ptr, rotated_ptr, uniforms_ptr, stats_ptr, rotation, value_max,
                             value_max_times_scale_max, AMAX_PASS, B_PACKED, B_SPLITS, B_STORE_CODES, B_STORE_DEQ,
                             EMULATED, DEBUG, BLOCK_R, TILES)
        elif SLOTS > 2:
            if p < c_end:
                _ms_eden_program(p - b_end, c_src_ptr, c_src_scales_ptr, c_src_tensor_scale_ptr, c_rows, c_cols,
                                 c_stride_r, c_stride_c, stats_row + C_ROW, c_seed_ptr, c_codes_ptr, c_scales_ptr,
                                 c_deq_ptr, c_tensor_scale_ptr, rotated_ptr, uniforms_ptr, stats_ptr, rotation,
                                 value_max, value_max_times_scale_max, AMAX_PASS, C_PACKED, C_SPLITS, C_STORE_CODES,
                                 C_STORE_DEQ, EMULATED, DEBUG, BLOCK_R, TILES)
            elif SLOTS > 3:
                _ms_eden_program(p - c_end, d_src_ptr, d_src_scales_ptr, d_src_tensor_scale_ptr, d_rows, d_cols,
                                 d_stride_r, d_stride_c, stats_row + D_ROW, d_seed_ptr, d_codes_ptr, d_scales_ptr,
                                 d_deq_ptr, d_tensor_scale_ptr, rotated_ptr, uniforms_ptr, stats_ptr, rotation,
                                 value_max, value_max_times_scale_max, AMAX_PASS, D_PACKED, D_SPLITS, D_STORE_CODES,
                                 D_STORE_DEQ, EMULATED, DEBUG, BLOCK_R, TILES)
# fmt: on


@dataclass(frozen=True)
class Operand:
    """One operand of a backward GEMM: ``source`` (or its transpose with ``transpose``; a saved
    :class:`NVFP4Tensor` is always re-quantized transposed), the int64 0-d device ``seed`` of its
    scale rounding, and what the quantizer writes (:func:`.layer.operands`)."""

    source: Tensor | NVFP4Tensor
    seed: Tensor
    transpose: bool
    codes: bool
    unscaled_bf16: bool


@dataclass(frozen=True)
class _Slot:
    """One operand of a launch: its runtime arguments in the kernel's slot order, its constexprs,
    its rows and 128-column groups, the buffers it writes, its debug buffers, its amax row, and
    the amax row of its transpose where an amax pass takes both from one read (``twin_row``)."""

    args: tuple
    constexprs: dict[str, Any]
    rows: int
    groups: int
    out: Outputs
    debug: tuple[Tensor | None, Tensor | None]
    row: int
    twin_row: int | None = None

    @classmethod
    def of(cls, operand: Operand, row: int, debug: dict[str, Tensor] | None = None) -> _Slot:
        source, transpose = operand.source, operand.transpose
        packed = isinstance(source, NVFP4Tensor)
        if packed:
            if not transpose:
                raise ValueError("a saved FP4 operand is re-quantized along its rows: pass transpose=True")
            cols, rows = source.codes.shape[0], 2 * source.codes.shape[1]
            device, src, strides = source.codes.device, source.codes, (0, 0)
            splits = 1
        else:
            src = source.T if transpose else source
            rows, cols = src.shape
            device, strides = src.device, (src.stride(0), src.stride(1))
            splits = SPLITS[src.dtype]
        if misaligned(cols, EDEN_GROUP) or misaligned(rows, BLOCK):
            raise ValueError(f"MS-EDEN needs [rows % 16, cols % 128] == 0, got [{rows}, {cols}]")
        out = Outputs.allocate(rows, cols, device, codes=operand.codes, unscaled_bf16=operand.unscaled_bf16)
        args = (
            src,
            source.scales.view(torch.uint8) if packed else None,
            source.tensor_scale if packed else None,
            rows,
            cols,
            *strides,
            operand.seed,
            out.codes,
            out.scales,
            out.unscaled_bf16,
            out.tensor_scale,
        )
        constexprs = {"PACKED": packed, "SPLITS": splits, "STORE_CODES": operand.codes,
                      "STORE_DEQ": operand.unscaled_bf16}  # fmt: skip
        return cls(args, constexprs, rows, cols // EDEN_GROUP, out, out.debug_buffers(debug, cols // BLOCK), row)

    def programs(self, block_r: int, tiles: int) -> int:
        """Programs of a pass whose programs take ``tiles`` tiles of ``block_r`` rows (one tile
        of 128 rows for a slot with a twin)."""
        if self.twin_row is not None:
            return cdiv(self.rows, EDEN_GROUP) * self.groups
        return cdiv(cdiv(self.rows, block_r), tiles) * self.groups

    def result(self) -> Quantized:
        return self.out.result(torch.Size(self.out.shape), torch.float32)


def _amax_slots(
    gemms: Sequence[Sequence[_Slot]], operands: Sequence[Sequence[Operand]], device: torch.device
) -> list[_Slot]:
    """The amax pass's slots for the operands of a backward's GEMMs: each operand alone, except
    that ``g`` (dgrad) and ``g^T`` (wgrad), the same dense gradient, become one slot reading it
    once for both (``g`` first, where the kernel takes a twin) unless ``ms_eden_amax``'s ``TWIN``
    is off."""
    slots = [slot for gemm in gemms for slot in gemm]
    if len(operands) == 2 and config("ms_eden_amax", device)["TWIN"]:
        (g, _), (gt, _) = operands
        if g.source is gt.source and not isinstance(g.source, NVFP4Tensor) and not g.transpose and gt.transpose:
            (g_slot, w_slot), (gt_slot, xt_slot) = gemms
            return [dataclasses.replace(g_slot, twin_row=gt_slot.row), w_slot, xt_slot]
    return slots


def tiles_per_program(tiles: int, max_tiles: int, sms: int, programs_per_sm: int) -> int:
    """Row tiles each program takes, for a launch of ``tiles`` tiles: the most, up to
    ``max_tiles`` (a power of two), that leave at least ``programs_per_sm`` programs per SM. More
    tiles per program load the rotation fewer times and overlap one tile's loads with the last
    one's arithmetic; fewer leave programs to fill the GPU (the 156M shapes in
    ``docs/kernels.md``)."""
    per_program = 1
    while per_program < max_tiles and tiles >= 2 * per_program * programs_per_sm * sms:
        per_program *= 2
    return per_program


def _pass(slots: Sequence[_Slot], rotation: Tensor, stats: Tensor, *, amax_pass: bool) -> None:
    """One pass over one to four operands in one launch, each slot on its amax row. Each pass
    has its own launch configuration (``ms_eden_amax``, ``ms_eden_quantize``): the amax pass
    holds few registers whatever its row tiles per program, while the quantize pass's registers
    grow with them and decide how many of its programs share an SM."""
    cfg = config("ms_eden_amax" if amax_pass else "ms_eden_quantize", rotation.device)
    block_r, max_tiles, programs_per_sm = cfg.pop("BLOCK_R"), cfg.pop("MAX_TILES"), cfg.pop("PROGRAMS_PER_SM")
    for launch_level in ("GEMMS", "TWIN"):
        cfg.pop(launch_level, None)
    sms = multiprocessors(rotation.device)
    tiles = tiles_per_program(sum(s.programs(block_r, 1) for s in slots), max_tiles, sms, programs_per_sm)
    ends = list(itertools.accumulate(slot.programs(block_r, tiles) for slot in slots))
    twin_row = slots[0].twin_row
    # Rows are constexpr offsets from the launch's lowest row: launches of other rows share a kernel.
    stats_row = min(slot.row for slot in slots)
    slot_args, constexprs = [], {}
    for i, name in enumerate("ABCD"):
        slot = slots[min(i, len(slots) - 1)]
        slot_args += slot.args if i < len(slots) else (None,) * SLOT_ARGS
        if i < MAX_SLOTS - 1:
            slot_args.append(ends[min(i, len(slots) - 1)])
        constexprs.update({f"{name}_{key}": value for key, value in slot.constexprs.items()})
        constexprs[f"{name}_ROW"] = slot.row - stats_row
    value_max = E2M1_MAX / MS_EDEN_SCALE_OVERRIDE
    debug = slots[0].debug
    run(_ms_eden_kernel, (ends[-1],), rotation, *rotation.stride(), stats, stats_row, *debug, value_max,
        value_max * MS_EDEN_SCALE_MAX, *slot_args, AMAX_PASS=amax_pass, SLOTS=len(slots),
        TWIN_ROW=None if twin_row is None else twin_row - stats_row, EMULATED=rotation.device.type != "cuda",
        DEBUG=debug[0] is not None, BLOCK_R=block_r, TILES=tiles, **constexprs, **cfg, **EXACT)  # fmt: skip


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
    slot = _Slot.of(Operand(operand, seed, transpose, codes, unscaled_bf16), stats_row, debug)
    if stats is None:
        stats = stats_scratch(1, rotation.device)
    for amax_pass in (True, False):
        _pass([slot], rotation, stats, amax_pass=amax_pass)
    return slot.result()


def ms_eden_gemms(
    gemms: Sequence[tuple[Operand, Operand]], rotation: Tensor, stats: Tensor
) -> Iterator[tuple[Quantized, Quantized]]:
    """:func:`ms_eden` of the two operands of each of a backward's GEMMs (one or two), operand
    ``i`` of the list into amax row ``i`` of the zeroed ``stats``: the amax pass of all of them in
    one launch (reading the gradient once for ``g`` and ``g^T``, :func:`_amax_slots`), then the
    quantize pass of ``GEMMS`` GEMMs' operands per launch (``configs``), each launch made when its
    first GEMM's operands are asked for. Bit for bit the separate calls."""
    slots = [[_Slot.of(operand, 2 * i + j) for j, operand in enumerate(gemm)] for i, gemm in enumerate(gemms)]
    _pass(_amax_slots(slots, gemms, rotation.device), rotation, stats, amax_pass=True)
    per_launch = config("ms_eden_quantize", rotation.device)["GEMMS"]
    for start in range(0, len(slots), per_launch):
        launched = slots[start : start + per_launch]
        _pass([slot for gemm in launched for slot in gemm], rotation, stats, amax_pass=False)
        for a, b in launched:
            yield a.result(), b.result()
