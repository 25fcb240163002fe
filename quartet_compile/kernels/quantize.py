"""Forward NVFP4 quantization kernels: tensor amax, then RTN or 4/6 per 16-element block
(SPEC sections 1-2), bit-for-bit equal to the reference quantizers.

Two launches: a bandwidth-bound amax reduction (the tensor scale must be known before any
block is rounded), then one pass that writes packed codes, E4M3 scale bytes and, when the
GEMM that follows wants it, the exact unscaled dequantized operand ``e2m1 * s_b`` in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..nvfp4.format import BLOCK, E2M1_MAX, E4M3_MAX, NVFP4Tensor
from ..nvfp4.numerics import FOUR_OVER_SIX_ALT_FACTOR, FOUR_OVER_SIX_SCALE_MAX, misaligned
from .configs import config
from .launch import cdiv, run
from .nvfp4_math import (
    accumulate_stats,
    block_scale,
    block_target,
    fast_division_ok,
    mul_rn,
    published_tensor_scale,
    round_half_block,
    store_half_blocks,
    tree_sum8,
)

EXACT = {"enable_fp_fusion": False}
"""Launch options of every kernel that must reproduce the reference's float32 rounding."""


@triton.jit
def _stats_kernel(
    stats_ptr, a_ptr, a_n, a_stats_row, a_programs, b_ptr, b_n, b_stats_row, TWO: tl.constexpr, BLOCK_SIZE: tl.constexpr
):
    """Row ``stats_row`` of ``stats_ptr`` (pre-zeroed float32 ``[rows, 2]``) <- ``[max |x|, 1 if
    some 0 < |x| < FAST_DIVISION_MIN]`` of a flat tensor, or of two (``TWO``: the first
    ``a_programs`` programs read ``a``, the rest ``b``) in one launch. NaN counts as +inf so that
    non-finite input yields a NaN tensor scale downstream; the flag sends the block pass to
    exact per-element division (:func:`nvfp4_math.divide`)."""
    p = tl.program_id(0)
    if p < a_programs:
        _accumulate_chunk(a_ptr, a_n, p, stats_ptr + 2 * a_stats_row, BLOCK_SIZE)
    if TWO:
        if p >= a_programs:
            _accumulate_chunk(b_ptr, b_n, p - a_programs, stats_ptr + 2 * b_stats_row, BLOCK_SIZE)


@triton.jit
def _accumulate_chunk(x_ptr, n, chunk, stats_ptr, BLOCK_SIZE: tl.constexpr):
    offsets = chunk.to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0).to(tl.float32)
    accumulate_stats(x, stats_ptr)


def stats_scratch(rows: int, device: torch.device) -> Tensor:
    """A zeroed float32 ``[rows, 2]`` buffer: one row of statistics per quantized operand, so that
    the quantizers of a layer share one allocation and one fill."""
    return torch.zeros(rows, 2, dtype=torch.float32, device=device)


def tensor_stats(x: Tensor, stats: Tensor | None = None, stats_row: int = 0) -> Tensor:
    """float32 ``[amax, tiny]`` of :func:`_stats_kernel`, one read of ``x``, into row
    ``stats_row`` of ``stats`` (:func:`stats_scratch`; a fresh one when not given)."""
    x = x.contiguous()
    if stats is None:
        stats = stats_scratch(1, x.device)
    if x.numel():
        cfg = config("stats", x.device)
        programs = cdiv(x.numel(), cfg["BLOCK_SIZE"])
        run(_stats_kernel, (programs,), stats, x, x.numel(), stats_row, programs, None, 0, 0, TWO=False, **cfg)
    return stats[stats_row]


def _pair_stats(a: Tensor, b: Tensor, stats: Tensor) -> None:
    """:func:`tensor_stats` of two non-empty contiguous tensors into rows 0 and 1, one launch."""
    cfg = config("stats", a.device)
    programs = cdiv(a.numel(), cfg["BLOCK_SIZE"])
    grid = (programs + cdiv(b.numel(), cfg["BLOCK_SIZE"]),)
    run(_stats_kernel, grid, stats, a, a.numel(), 0, programs, b, b.numel(), 1, TWO=True, **cfg)


def tensor_amax(x: Tensor) -> Tensor:
    """float32 0-d ``max |x|`` (``inf`` if ``x`` holds NaN or Inf)."""
    return tensor_stats(x)[0]


@triton.jit
def _round_half(x, s_b, d, inv_d, FAST: tl.constexpr):
    """One half-block ``[R, NB, 8]`` divided by its block's ``d`` and rounded: E2M1 values,
    codes, and the block's pairwise sum of squared errors ``((u - q) s_b)^2``."""
    u, q, code = round_half_block(x, d, inv_d, FAST)
    err = (u - q) * s_b[:, :, None]
    return q, code, tree_sum8(mul_rn(err, err))


@triton.jit
def _tile_max(t):
    """``[R, NB]`` -> the maximum of each 16-row group, broadcast back over its rows."""
    tiles = tl.max(tl.reshape(t, (t.shape[0] // 16, 16, t.shape[1])), axis=1)
    return tl.reshape(tl.broadcast_to(tiles[:, None, :], (t.shape[0] // 16, 16, t.shape[1])), t.shape)


@triton.jit
def _quantize_blocks(
    lo, hi, s_t, value_max, alt_factor, FOUR_OVER_SIX: tl.constexpr, TILE_2D: tl.constexpr, FAST: tl.constexpr
):
    """Blocks of 16 held as halves ``lo``, ``hi`` ``[R, NB, 8]`` float32 (so that one thread owns
    a whole block) -> (E4M3 block scales ``[R, NB]``, E2M1 values and codes of both halves).
    TILE_2D: every block takes the target scale of its 16x16 tile (rows aligned to 16); the
    target is a correctly rounded division by a constant, so the tile's largest target is
    the target of the tile's amax, as the reference computes it."""
    inv_s_t = tl.math.div_rn(1.0, s_t)
    target = block_target(lo, hi, value_max, FAST)
    if TILE_2D:
        target = _tile_max(target)
    s_b, d, inv_d = block_scale(target, s_t, inv_s_t, FAST)
    q_lo, code_lo, err_lo = _round_half(lo, s_b, d, inv_d, FAST)
    q_hi, code_hi, err_hi = _round_half(hi, s_b, d, inv_d, FAST)
    if FOUR_OVER_SIX:
        s_alt, d_alt, inv_d_alt = block_scale(target * tl.cast(alt_factor, tl.float32), s_t, inv_s_t, FAST)
        q_lo_alt, code_lo_alt, err_lo_alt = _round_half(lo, s_alt, d_alt, inv_d_alt, FAST)
        q_hi_alt, code_hi_alt, err_hi_alt = _round_half(hi, s_alt, d_alt, inv_d_alt, FAST)
        pick_alt = err_lo_alt + err_hi_alt < err_lo + err_hi
        s_b = tl.where(pick_alt, s_alt, s_b)
        pick = pick_alt[:, :, None]
        q_lo, q_hi = tl.where(pick, q_lo_alt, q_lo), tl.where(pick, q_hi_alt, q_hi)
        code_lo, code_hi = tl.where(pick, code_lo_alt, code_lo), tl.where(pick, code_hi_alt, code_hi)
    return s_b, q_lo, q_hi, code_lo, code_hi


@triton.jit
def _quantize_program(
    pid_r,
    pid_c,
    x_ptr,
    rows,
    cols,
    stride_r,
    stride_c,
    stats_ptr,
    stats_row,
    codes_ptr,
    scales_ptr,
    deq_ptr,
    tensor_scale_ptr,
    value_max,
    value_max_times_scale_max,
    alt_factor,
    FOUR_OVER_SIX: tl.constexpr,
    TILE_2D: tl.constexpr,
    STORE_CODES: tl.constexpr,
    STORE_DEQ: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Rows ``pid_r * BLOCK_R ..`` and columns ``pid_c * BLOCK_C ..`` of one operand."""
    NB: tl.constexpr = BLOCK_C // 16
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    blocks = pid_c * NB + tl.arange(0, NB)
    r64 = r.to(tl.int64)[:, None, None]
    block_mask = (r < rows)[:, None] & (blocks < cols // 16)[None, :]
    mask = block_mask[:, :, None]
    c = blocks[None, :, None] * 16 + tl.arange(0, 8)[None, None, :]
    lo_ptrs = x_ptr + r64 * stride_r + c * stride_c
    lo = tl.load(lo_ptrs, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(lo_ptrs + 8 * stride_c, mask=mask, other=0.0).to(tl.float32)

    stats_ptr += 2 * stats_row
    s_t = published_tensor_scale(stats_ptr, value_max_times_scale_max, tensor_scale_ptr, (pid_r == 0) & (pid_c == 0))

    if fast_division_ok(stats_ptr, s_t):
        s_b, q_lo, q_hi, code_lo, code_hi = _quantize_blocks(
            lo, hi, s_t, value_max, alt_factor, FOUR_OVER_SIX, TILE_2D, True
        )
    else:
        s_b, q_lo, q_hi, code_lo, code_hi = _quantize_blocks(
            lo, hi, s_t, value_max, alt_factor, FOUR_OVER_SIX, TILE_2D, False
        )

    store_half_blocks(
        codes_ptr,
        scales_ptr,
        deq_ptr,
        r,
        blocks,
        cols,
        block_mask,
        s_b,
        q_lo,
        q_hi,
        code_lo,
        code_hi,
        STORE_CODES,
        STORE_DEQ,
    )


@triton.jit
def _quantize_kernel(
    stats_ptr,
    value_max,
    value_max_times_scale_max,
    alt_factor,
    a_x_ptr,
    a_rows,
    a_cols,
    a_stride_r,
    a_stride_c,
    a_stats_row,
    a_codes_ptr,
    a_scales_ptr,
    a_deq_ptr,
    a_tensor_scale_ptr,
    a_programs,
    b_x_ptr,
    b_rows,
    b_cols,
    b_stride_r,
    b_stride_c,
    b_stats_row,
    b_codes_ptr,
    b_scales_ptr,
    b_deq_ptr,
    b_tensor_scale_ptr,
    FOUR_OVER_SIX: tl.constexpr,
    TILE_2D: tl.constexpr,
    A_STORE_CODES: tl.constexpr,
    A_STORE_DEQ: tl.constexpr,
    B_STORE_CODES: tl.constexpr,
    B_STORE_DEQ: tl.constexpr,
    TWO: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """The block pass over one operand, or over two (``TWO``) in one launch: the first
    ``a_programs`` programs take operand ``a`` (consecutive programs take consecutive row tiles),
    the rest operand ``b``."""
    p = tl.program_id(0)
    if p < a_programs:
        row_blocks = tl.cdiv(a_rows, BLOCK_R)
        _quantize_program(
            p % row_blocks,
            p // row_blocks,
            a_x_ptr,
            a_rows,
            a_cols,
            a_stride_r,
            a_stride_c,
            stats_ptr,
            a_stats_row,
            a_codes_ptr,
            a_scales_ptr,
            a_deq_ptr,
            a_tensor_scale_ptr,
            value_max,
            value_max_times_scale_max,
            alt_factor,
            FOUR_OVER_SIX,
            TILE_2D,
            A_STORE_CODES,
            A_STORE_DEQ,
            BLOCK_R,
            BLOCK_C,
        )
    if TWO:
        if p >= a_programs:
            q = p - a_programs
            row_blocks = tl.cdiv(b_rows, BLOCK_R)
            _quantize_program(
                q % row_blocks,
                q // row_blocks,
                b_x_ptr,
                b_rows,
                b_cols,
                b_stride_r,
                b_stride_c,
                stats_ptr,
                b_stats_row,
                b_codes_ptr,
                b_scales_ptr,
                b_deq_ptr,
                b_tensor_scale_ptr,
                value_max,
                value_max_times_scale_max,
                alt_factor,
                FOUR_OVER_SIX,
                TILE_2D,
                B_STORE_CODES,
                B_STORE_DEQ,
                BLOCK_R,
                BLOCK_C,
            )


@dataclass(frozen=True)
class Quantized:
    """A kernel's NVFP4 result: the container (``None`` when codes were not asked for) and/or
    the exact unscaled dequantized operand ``e2m1 * s_b`` in bf16 for a bf16 GEMM."""

    fp4: NVFP4Tensor | None
    unscaled_bf16: Tensor | None
    tensor_scale: Tensor


@dataclass(frozen=True)
class Outputs:
    """The buffers a quantize kernel writes (every quantizer here has the same four): packed
    codes and E4M3 scale bytes when codes are asked for, the unscaled bf16 operand when it is,
    and the float32 tensor scale. The tensor scale is allocated with one element and viewed as
    0-d in :meth:`result`: Inductor lowers a 0-d ``empty`` to a kernel that fills it, one
    launch per quantized operand in a compiled graph."""

    codes: Tensor | None
    scales: Tensor | None
    unscaled_bf16: Tensor | None
    tensor_scale: Tensor
    shape: tuple[int, int]

    @classmethod
    def allocate(cls, rows: int, cols: int, device: torch.device, *, codes: bool, unscaled_bf16: bool) -> Outputs:
        def empty(*shape: int, dtype: torch.dtype) -> Tensor:
            return torch.empty(shape, dtype=dtype, device=device)

        return cls(
            empty(rows, cols // 2, dtype=torch.uint8) if codes else None,
            empty(rows, cols // BLOCK, dtype=torch.uint8) if codes else None,
            empty(rows, cols, dtype=torch.bfloat16) if unscaled_bf16 else None,
            empty(1, dtype=torch.float32),
            (rows, cols),
        )

    def debug_buffers(
        self, debug: dict[str, Tensor] | None, uniforms_per_row: int | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """The float32 ``rotated`` operand and ``uniforms`` ``[rows, uniforms_per_row]`` a
        stochastic quantizer writes into ``debug`` for bit-exact comparison with the reference
        (``None`` without ``debug``, and uniforms only where ``uniforms_per_row`` is given)."""
        if debug is None:
            return None, None
        rows, cols = self.shape
        debug["rotated"] = torch.empty(rows, cols, dtype=torch.float32, device=self.tensor_scale.device)
        if uniforms_per_row is not None:
            debug["uniforms"] = torch.empty(
                rows, uniforms_per_row, dtype=torch.float32, device=self.tensor_scale.device
            )
        return debug["rotated"], debug.get("uniforms")

    def result(self, shape: torch.Size, dtype: torch.dtype) -> Quantized:
        """The :class:`Quantized` view of the written buffers; ``shape``, ``dtype``: the source's."""
        fp4 = None
        tensor_scale = self.tensor_scale.view(())
        if self.codes is not None:
            fp4 = NVFP4Tensor(self.codes, self.scales.view(torch.float8_e4m3fn), tensor_scale, shape, dtype)
        return Quantized(fp4, self.unscaled_bf16, tensor_scale)


def two_passes(kernel: Any, grid: tuple[int, ...], args: tuple, constexprs: dict[str, Any]) -> None:
    """The two launches of a stochastic quantizer, with the same arguments: the statistics pass
    (``AMAX_PASS``: the amax of the rotated operand into the stats buffer), then the quantize
    pass, which recomputes the (cheap) rotation rather than storing it."""
    for amax_pass in (True, False):
        run(kernel, grid, *args, AMAX_PASS=amax_pass, **constexprs, **EXACT)


def _check_last_dim(x: Tensor, multiple: int) -> None:
    if x.dim() != 2 or misaligned(x.shape[1], multiple):
        raise ValueError(
            f"NVFP4 kernels quantize 2-D tensors along a last dimension divisible by {multiple}, "
            f"got shape {tuple(x.shape)}"
        )


def _block_pass_slot(x: Tensor, out: Outputs, stats_row: int, cfg: dict[str, Any]) -> tuple[tuple, int]:
    """One operand's arguments of :func:`_quantize_kernel` (a slot) and its program count."""
    rows, cols = x.shape
    args = (
        x,
        rows,
        cols,
        x.stride(0),
        x.stride(1),
        stats_row,
        out.codes,
        out.scales,
        out.unscaled_bf16,
        out.tensor_scale,
    )
    return args, cdiv(rows, cfg["BLOCK_R"]) * cdiv(cols, cfg["BLOCK_C"])


def _block_pass(slots: list[tuple[tuple, int, Outputs]], stats: Tensor, scale_max: float, cfg: dict[str, Any],
                *, four_over_six: bool, tile_2d: bool) -> None:  # fmt: skip
    """The block pass over one operand or two, in one launch."""
    (a_args, a_programs, a_out), (b_args, _, b_out) = slots[0], slots[-1]
    run(
        _quantize_kernel,
        (sum(programs for _, programs, _ in slots),),
        stats,
        E2M1_MAX,
        E2M1_MAX * scale_max,
        FOUR_OVER_SIX_ALT_FACTOR,
        *a_args,
        a_programs,
        *(b_args if len(slots) == 2 else (None,) * len(a_args)),
        FOUR_OVER_SIX=four_over_six,
        TILE_2D=tile_2d,
        A_STORE_CODES=a_out.codes is not None,
        A_STORE_DEQ=a_out.unscaled_bf16 is not None,
        B_STORE_CODES=b_out.codes is not None,
        B_STORE_DEQ=b_out.unscaled_bf16 is not None,
        TWO=len(slots) == 2,
        **cfg,
        **EXACT,
    )


def quantize(
    x: Tensor,
    *,
    four_over_six: bool = False,
    tile_2d: bool = False,
    codes: bool = True,
    unscaled_bf16: bool = False,
    stats: Tensor | None = None,
    stats_row: int = 0,
) -> Quantized:
    """RTN ("6") or 4/6 NVFP4 quantization of a 2-D CUDA tensor (any strides) along its last
    dimension; the numbers of ``reference.quantize_rtn`` / ``quantize_four_over_six``, or with
    ``tile_2d`` of ``reference.quantize_rtn_2d`` (one scale per 16x16 tile, RTN only).
    ``stats``, ``stats_row``: a row of a zeroed :func:`stats_scratch` for the statistics pass."""
    _check_last_dim(x, BLOCK)
    rows, cols = x.shape
    if tile_2d and (four_over_six or misaligned(rows, BLOCK)):
        raise ValueError(f"16x16 block scaling is RTN only and needs rows % 16 == 0, got {rows} rows")
    cfg = config("quantize_tile_2d" if tile_2d else "quantize", x.device)
    out = Outputs.allocate(rows, cols, x.device, codes=codes, unscaled_bf16=unscaled_bf16)
    if stats is None:
        stats = stats_scratch(1, x.device)
    tensor_stats(x, stats, stats_row)
    if x.numel():
        args, programs = _block_pass_slot(x, out, stats_row, cfg)
        scale_max = FOUR_OVER_SIX_SCALE_MAX if four_over_six else E4M3_MAX
        _block_pass([(args, programs, out)], stats, scale_max, cfg, four_over_six=four_over_six, tile_2d=tile_2d)
    else:
        out.tensor_scale.fill_(1.0)
    return out.result(x.shape, x.dtype)


def quantize_pair(
    x: Tensor, weight: Tensor, *, four_over_six: bool, x_codes: bool, unscaled_bf16: bool
) -> tuple[Quantized, Quantized]:
    """The forward's two operands, :func:`quantize` of ``x`` (codes only if ``x_codes``) and of
    ``weight`` (always with codes, which backward re-quantizes), with the statistics of both in
    one launch and the block passes of both in one more: bit for bit the two separate calls,
    half their launches."""
    _check_last_dim(x, BLOCK)
    _check_last_dim(weight, BLOCK)
    stats = stats_scratch(2, x.device)
    if not x.numel() or not weight.numel():
        return (
            quantize(x, four_over_six=four_over_six, codes=x_codes, unscaled_bf16=unscaled_bf16, stats=stats),
            quantize(weight, four_over_six=four_over_six, unscaled_bf16=unscaled_bf16, stats=stats, stats_row=1),
        )
    _pair_stats(x.contiguous(), weight.contiguous(), stats)
    cfg = config("quantize", x.device)
    outs = [
        Outputs.allocate(*x.shape, x.device, codes=x_codes, unscaled_bf16=unscaled_bf16),
        Outputs.allocate(*weight.shape, x.device, codes=True, unscaled_bf16=unscaled_bf16),
    ]
    slots = [
        (*_block_pass_slot(t, out, row, cfg), out) for row, (t, out) in enumerate(zip((x, weight), outs, strict=True))
    ]
    scale_max = FOUR_OVER_SIX_SCALE_MAX if four_over_six else E4M3_MAX
    _block_pass(slots, stats, scale_max, cfg, four_over_six=four_over_six, tile_2d=False)
    return outs[0].result(x.shape, x.dtype), outs[1].result(weight.shape, weight.dtype)
