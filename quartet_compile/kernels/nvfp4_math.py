"""Triton device functions for the NVFP4 element formats, bit-for-bit equal to the reference's
rounding (``reference.rounding``) and its quantizers' float32 operation order.

Rounding to E4M3 is integer bit manipulation plus one exact float32 add, never a
``float32 -> float8e4nv`` conversion (the Triton interpreter mis-rounds those near powers
of two). Every division is correctly rounded: ``div_rn`` (Triton's ``/`` on float32 is
approximate) or the exact fast path of :func:`divide`. No multiply whose product feeds an add
is left for the compiler to contract into an FMA the reference does not perform: those products
are :func:`mul_rn`, so a kernel computes the same numbers whatever its launch options (Inductor
compiles user kernels with FP fusion on; a CPU test compares the machine code of the quantize
kernels compiled with fusion on and off).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")
"""Kernels run in the Triton interpreter (the CPU tests), which rounds every operation on its own
and has no PTX."""

E4M3_MIN_NORMAL = tl.constexpr(0.015625)  # 2**-6
# Adding 2**14 to a float32 below 2**-6 rounds it, half to even, to a multiple of
# 2**-9 (the ulp of [2**14, 2**15)): the E4M3 subnormal grid. Subtracting it is exact.
E4M3_SUBNORMAL_ROUNDER = tl.constexpr(16384.0)
FP32_MIN_NORMAL = tl.constexpr(1.1754943508222875e-38)
E2M1_MAGIC_MIN_BITS = tl.constexpr(0x4A800000)  # 2**22: float32 spacing 0.5, the grid's on [0, 2)


FAST_DIVISION_MIN = tl.constexpr(2.0**-96)
"""Smallest nonzero numerator for which :func:`divide`'s fast path is exact: below it the
remainder ``x - d q`` can fall under float32's subnormal spacing."""
FAST_DIVISION_MIN_BITS = tl.constexpr(0x0F800000)  # the float32 bits of 2**-96
FAST_DIVISION_SCALE_MIN = tl.constexpr(2.0**-64)
FAST_DIVISION_SCALE_MAX = tl.constexpr(2.0**64)
"""Tensor scales for which every divisor of a block pass (``s_b s_t`` with ``s_b`` an E4M3
value) and its reciprocal are normal floats far from overflow."""


@triton.jit
def mul_rn(a, b):
    """float32 ``a * b`` rounded on its own: PTX ``mul.rn``, which no compiler pass contracts
    with a following add into an FMA."""
    if INTERPRETED:
        return a * b
    else:
        return tl.inline_asm_elementwise(
            "mul.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True, pack=1
        )


@triton.jit
def magnitude_bits(a):
    """Per element of float32 magnitudes ``a``, what :func:`publish_stats` reduces: the bits
    (integer order is float order on them, and NaN sorts above +inf) and the bits minus one as
    unsigned (zeros wrap to the largest value, so the minimum is the smallest nonzero's)."""
    bits = a.to(tl.int32, bitcast=True) & 0x7FFFFFFF
    return bits, (bits - 1).to(tl.uint32, bitcast=True)


@triton.jit
def publish_stats(bits, below, stats_ptr):
    """Fold :func:`magnitude_bits` (any shape, or running extremes of several of them) into
    ``stats_ptr`` (pre-zeroed float32[2]): ``[max a, 1 if some 0 < a < FAST_DIVISION_MIN]``, NaN
    counting as +inf. The atomics are relaxed: only a later launch reads the result, and the
    default acquire-release order fences the program's in-flight loads at every call."""
    top = tl.max(bits, axis=None)
    amax = tl.where(top > 0x7F800000, 0x7F800000, top).to(tl.float32, bitcast=True)
    tiny = tl.min(below, axis=None) < (FAST_DIVISION_MIN_BITS - 1)
    tl.atomic_max(stats_ptr, amax, sem="relaxed")
    tl.atomic_max(stats_ptr + 1, tl.where(tiny, 1.0, 0.0), sem="relaxed")


@triton.jit
def accumulate_stats(a, stats_ptr):
    """Fold float32 magnitudes ``a`` (any shape) into ``stats_ptr``: :func:`publish_stats`."""
    bits, below = magnitude_bits(a)
    publish_stats(bits, below, stats_ptr)


@triton.jit
def fast_division_ok(stats_ptr, s_t):
    """Whether every division of a block pass may take :func:`divide`'s fast path, given the
    ``[amax, tiny]`` statistics of its input and its tensor scale."""
    tiny = tl.load(stats_ptr + 1)
    return (tiny == 0.0) & (s_t >= FAST_DIVISION_SCALE_MIN) & (s_t <= FAST_DIVISION_SCALE_MAX)


@triton.jit
def divide(x, d, inv_d, FAST: tl.constexpr):
    """``RN(x / d)`` for ``d > 0``, bit-for-bit ``div_rn``. FAST: ``inv_d = RN(1/d)`` is
    shared by a whole block, and two Newton corrections with exact FMA remainders replace
    the per-element reciprocal and range check of ``div.rn`` (Markstein's theorem: a
    correction from a faithful quotient with a reciprocal within half an ulp rounds
    correctly). Exact when ``x`` is 0 or ``|x| >= FAST_DIVISION_MIN``, ``d`` and ``1/d`` are
    normal and the quotient is finite; a quotient that underflows comes out subnormal (not
    necessarily the same one), which the block passes round to a zero code and square to
    zero either way."""
    if FAST:
        q = x * inv_d
        q = tl.fma(tl.fma(-d, q, x), inv_d, q)
        q = tl.fma(tl.fma(-d, q, x), inv_d, q)
        magnitude = q.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        return (magnitude | (x.to(tl.int32, bitcast=True) & -0x80000000)).to(tl.float32, bitcast=True)
    return tl.math.div_rn(x, d)


@triton.jit
def e4m3_rne(v):
    """Round a non-negative float32 to the nearest-even E4M3 value, saturating at 448."""
    v = tl.minimum(v, 448.0)
    bits = v.to(tl.int32, bitcast=True)
    normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000).to(tl.float32, bitcast=True)
    subnormal = (v + E4M3_SUBNORMAL_ROUNDER) - E4M3_SUBNORMAL_ROUNDER
    return tl.where(v < E4M3_MIN_NORMAL, subnormal, normal)


@triton.jit
def _e4m3_ulp_exponent(v):
    """Exponent of the E4M3 grid spacing around a non-negative float32 ``v`` (``<= 448``)."""
    exponent = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    return tl.maximum(exponent, -6) - 3


@triton.jit
def e4m3_sr(v, uniform):
    """Stochastic rounding of a non-negative float32 to one of its two E4M3 neighbours:
    up when ``uniform < (v - low) / ulp``. The spacing is a power of two, so scaling by it
    and its inverse is exact, as in the reference's divisions."""
    v = tl.minimum(tl.maximum(v, 0.0), 448.0)
    e = _e4m3_ulp_exponent(v)
    ulp = ((e + 127) << 23).to(tl.float32, bitcast=True)
    inv_ulp = ((127 - e) << 23).to(tl.float32, bitcast=True)
    low = mul_rn(tl.floor(v * inv_ulp), ulp)
    return tl.where(uniform < (v - low) * inv_ulp, low + ulp, low)


@triton.jit
def e4m3_bits(s):
    """uint8 bit pattern of a float32 that is already an E4M3 value in ``[0, 448]``."""
    bits = s.to(tl.int32, bitcast=True)
    normal = ((((bits >> 23) & 0xFF) - 120) << 3) | ((bits >> 20) & 7)
    subnormal = (s * 512.0).to(tl.int32)
    return tl.where(s < E4M3_MIN_NORMAL, subnormal, normal).to(tl.uint8)


@triton.jit
def e4m3_value(bits):
    """float32 value of uint8 E4M3 bits (finite patterns)."""
    b = bits.to(tl.int32)
    exponent = (b >> 3) & 0xF
    mantissa = b & 7
    normal = (((exponent + 120) << 23) | (mantissa << 20)).to(tl.float32, bitcast=True)
    value = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.001953125, normal)
    return tl.where((b & 0x80) != 0, -value, value)


@triton.jit
def e2m1_round_code(u):
    """Round-to-nearest-even onto the E2M1 grid, saturating at 6 (``reference.formats.round_to_e2m1``):
    the value as a float32 carrying the sign bit of ``u``, and the code (0..15).

    Adding a power of two ``magic`` whose float32 spacing equals the grid spacing (0.5 on
    [0, 2), 1 on [2, 4), 2 on [4, 6]) makes the FPU do the rounding, ties to even; the code
    is then the number of grid steps above ``magic`` plus the codes below its binade.
    """
    m = tl.minimum(tl.abs(u), 6.0)
    magic_bits = tl.maximum((m.to(tl.int32, bitcast=True) & 0x7F800000) + (22 << 23), E2M1_MAGIC_MIN_BITS)
    magic = magic_bits.to(tl.float32, bitcast=True)
    rounded = m + magic
    sign = u.to(tl.int32, bitcast=True) & -0x80000000
    q = ((rounded - magic).to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    steps = rounded.to(tl.int32, bitcast=True) - magic_bits
    code = steps + ((magic_bits - E2M1_MAGIC_MIN_BITS) >> 22)
    return q, code | ((sign >> 28) & 8)


@triton.jit
def e2m1_sr(u, uniform):
    """Stochastic rounding onto the E2M1 grid (``reference.formats.stochastic_round_to_e2m1``):
    ``|u|`` (saturated at 6) goes up to the next grid point when ``uniform`` is below its
    fractional distance from the point below. Returns the value carrying the sign bit of
    ``u`` and the code (0..15). The grid spacing (0.5, 1 or 2) is a power of two, so the
    distance and its scaling are exact, as in the reference's division by the step."""
    m = tl.minimum(tl.abs(u), 6.0)
    spacing = tl.where(m < 2.0, 0.5, tl.where(m < 4.0, 1.0, 2.0))
    inv_spacing = tl.where(m < 2.0, 2.0, tl.where(m < 4.0, 1.0, 0.5))
    steps = tl.floor(m * inv_spacing)
    low = mul_rn(steps, spacing)
    up = uniform < (m - low) * inv_spacing
    magnitude = tl.where(up, low + spacing, low)
    sign = u.to(tl.int32, bitcast=True) & -0x80000000
    q = (magnitude.to(tl.int32, bitcast=True) | sign).to(tl.float32, bitcast=True)
    # Codes below the point: 0..3 on [0, 2) (steps of 0.5), 4..5 on [2, 4), 6..7 on [4, 6].
    code = steps.to(tl.int32) + tl.where(m < 2.0, 0, tl.where(m < 4.0, 2, 4)) + up.to(tl.int32)
    return q, code | ((sign >> 28) & 8)


E2M1_TO_FP32_EXPONENT = tl.constexpr(2.0**126)


@triton.jit
def e2m1_value(code):
    """float32 value of an E2M1 code (0..15). E2M1's sign, exponent and mantissa bits placed in
    float32's sign, lowest exponent bits and top mantissa bit give the same significand with
    the exponent 126 lower (biases 1 and 127); E2M1's subnormal lands on float32's, so one
    exact multiplication by ``2**126`` (subnormals are not flushed) finishes the conversion."""
    c = code.to(tl.int32)
    return (((c & 8) << 28) | ((c & 7) << 22)).to(tl.float32, bitcast=True) * E2M1_TO_FP32_EXPONENT


@triton.jit
def block_target(lo, hi, value_max, FAST: tl.constexpr):
    """Target scale ``max |block| / value_max`` of blocks held as halves ``[R, NB, 8]``.
    (Scalar arguments are cast to float32 here and below: Inductor passes Python floats to
    kernels as float64, Triton's own launcher as float32.)"""
    value_max = tl.cast(value_max, tl.float32)
    amax = tl.maximum(tl.max(tl.abs(lo), axis=2), tl.max(tl.abs(hi), axis=2))
    return divide(amax, value_max, tl.math.div_rn(1.0, value_max), FAST)


@triton.jit
def block_scale(target, s_t, inv_s_t, FAST: tl.constexpr):
    """E4M3 block scale ``s_b`` for a float32 target (1 where it rounds to 0, SPEC 1), the
    divisor ``s_b s_t`` of its elements and that divisor's reciprocal for :func:`divide`."""
    s_b = e4m3_rne(divide(target, s_t, inv_s_t, FAST))
    s_b = tl.where(s_b == 0.0, 1.0, s_b)
    d = s_b * s_t
    return s_b, d, tl.math.div_rn(1.0, d)


@triton.jit
def round_half_block(x, d, inv_d, FAST: tl.constexpr):
    """Half-blocks ``[R, NB, 8]`` divided by their block's divisor ``d`` ``[R, NB]`` and rounded
    to E2M1: ``u``, the E2M1 values and the codes."""
    u = divide(x, d[:, :, None], inv_d[:, :, None], FAST)
    q, code = e2m1_round_code(u)
    return u, q, code


@triton.jit
def store_half_blocks(
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
    STORE_CODES: tl.constexpr,
    STORE_DEQ: tl.constexpr,
):
    """Write quantized blocks of rows ``r`` and block columns ``blocks`` (``mask`` ``[R, NB]``):
    packed codes and E4M3 scale bytes of the NVFP4 layout, and/or the unscaled bf16 operand."""
    r64 = r.to(tl.int64)[:, None]
    half_mask = mask[:, :, None]
    if STORE_CODES:
        byte_ptrs = codes_ptr + (r64 * (cols // 2) + blocks[None, :] * 8)[:, :, None] + tl.arange(0, 4)[None, None, :]
        tl.store(byte_ptrs, pack_codes(code_lo), mask=half_mask)
        tl.store(byte_ptrs + 4, pack_codes(code_hi), mask=half_mask)
        tl.store(scales_ptr + r64 * (cols // 16) + blocks[None, :], e4m3_bits(s_b), mask=mask)
    if STORE_DEQ:
        deq_ptrs = deq_ptr + (r64 * cols + blocks[None, :] * 16)[:, :, None] + tl.arange(0, 8)[None, None, :]
        tl.store(deq_ptrs, (q_lo * s_b[:, :, None]).to(tl.bfloat16), mask=half_mask)
        tl.store(deq_ptrs + 8, (q_hi * s_b[:, :, None]).to(tl.bfloat16), mask=half_mask)


@triton.jit
def pair_sum(t):
    """``[..., 2n] -> [..., n]``: sums of adjacent pairs along the last axis, one level of the
    reference's pairwise ``tree_sum``."""
    lo, hi = tl.split(tl.reshape(t, t.shape[:-1] + (t.shape[-1] // 2, 2)))
    return lo + hi


@triton.jit
def tree_sum8(t):
    """``[..., 8] -> [...]``: the pairwise tree sum of a half-block; two halves added give the
    reference's ``tree_sum`` of the 16-element block."""
    return tl.reshape(pair_sum(pair_sum(pair_sum(t))), t.shape[:-1])


@triton.jit
def tensor_scale(amax, value_max_times_scale_max):
    """``s_t`` of SPEC 2 from the tensor amax: 1 for an all-zero tensor, held at the smallest
    normal float32, NaN for non-finite input (amax is +inf then)."""
    s_t = tl.maximum(tl.math.div_rn(amax, tl.cast(value_max_times_scale_max, tl.float32)), FP32_MIN_NORMAL)
    s_t = tl.where(amax == 0.0, 1.0, s_t)
    return tl.where(amax == float("inf"), float("nan"), s_t)


@triton.jit
def published_tensor_scale(stats_ptr, value_max_times_scale_max, tensor_scale_ptr, first):
    """``s_t`` from the ``[amax, tiny]`` statistics of the pass before; the ``first`` program of
    the tensor also writes it out, once for the whole tensor."""
    s_t = tensor_scale(tl.load(stats_ptr), value_max_times_scale_max)
    if first:
        tl.store(tensor_scale_ptr, s_t)
    return s_t


@triton.jit
def pack_codes(codes):
    """``[..., 2n]`` codes -> ``[..., n]`` uint8 bytes, element 2i in the low nibble."""
    lo, hi = tl.split(tl.reshape(codes, codes.shape[:-1] + (codes.shape[-1] // 2, 2)))
    return (lo | (hi << 4)).to(tl.uint8)
