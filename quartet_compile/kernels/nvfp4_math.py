"""Triton device functions for the NVFP4 element formats, bit-for-bit equal to
``quartet_compile.reference.formats`` and the reference quantizers' float32 operation order.

Rounding to E4M3 is integer bit manipulation plus one exact float32 add, never a
``float32 -> float8e4nv`` conversion (the Triton interpreter mis-rounds those near powers
of two). Every division is ``div_rn`` (Triton's ``/`` on float32 is approximate), and the
kernels that call these helpers are launched with ``enable_fp_fusion=False`` so that no
multiply-add is contracted into an FMA that the reference does not perform.
"""

from __future__ import annotations

import triton
import triton.language as tl

E4M3_MIN_NORMAL = tl.constexpr(0.015625)  # 2**-6
# Adding 2**14 to a float32 below 2**-6 rounds it, half to even, to a multiple of
# 2**-9 (the ulp of [2**14, 2**15)): the E4M3 subnormal grid. Subtracting it is exact.
E4M3_SUBNORMAL_ROUNDER = tl.constexpr(16384.0)
FP32_MIN_NORMAL = tl.constexpr(1.1754943508222875e-38)


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
    low = tl.floor(v * inv_ulp) * ulp
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
def e2m1_round(u):
    """Round-to-nearest-even onto the E2M1 grid, saturating at 6, as a float32 carrying the
    sign bit of ``u`` (``reference.formats.round_to_e2m1`` decoded). On [1, 6] the grid is
    the floats with one mantissa bit, so an integer round-to-nearest-even of the bit pattern
    does it; below 1 the grid is {0, 0.5, 1} with ties 0.25 -> 0 and 0.75 -> 1."""
    m = tl.minimum(tl.abs(u), 6.0)
    b = m.to(tl.int32, bitcast=True)
    normal = ((b + 0x1FFFFF + ((b >> 22) & 1)) & -0x400000).to(tl.float32, bitcast=True)
    small = tl.where(m > 0.25, 0.5, 0.0) + tl.where(m >= 0.75, 0.5, 0.0)
    q = tl.where(m < 1.0, small, normal).to(tl.int32, bitcast=True)
    return (q | (u.to(tl.int32, bitcast=True) & -0x80000000)).to(tl.float32, bitcast=True)


@triton.jit
def e2m1_code(q):
    """Code (0..15) of a float32 that is an E2M1 value (an output of :func:`e2m1_round`)."""
    b = q.to(tl.int32, bitcast=True)
    magnitude = (b & 0x7FFFFFFF).to(tl.float32, bitcast=True)
    code = tl.where(magnitude >= 1.0, ((b & 0x7FFFFFFF) >> 22) - 252, (magnitude * 2.0).to(tl.int32))
    return code | ((b >> 28) & 8)


@triton.jit
def e2m1_value(code):
    """float32 value of an E2M1 code (0..15): ``(1 + m/2) * 2**(e-1)``, or ``m/2`` for e = 0."""
    c = code.to(tl.int32)
    e = (c >> 1) & 3
    m = c & 1
    normal = (((e + 126) << 23) | (m << 22)).to(tl.float32, bitcast=True)
    value = tl.where(e == 0, m.to(tl.float32) * 0.5, normal)
    return tl.where((c & 8) != 0, -value, value)


@triton.jit
def pair_sum(t):
    """``[A, 2n] -> [A, n]``: sums of adjacent pairs, one level of the reference's pairwise
    ``tree_sum``. Kept 2-D: on 3-D/4-D views Triton shuffles the pairs through shared memory."""
    lo, hi = tl.split(tl.reshape(t, (t.shape[0], t.shape[1] // 2, 2)))
    return lo + hi


@triton.jit
def tree_sum16(t):
    """``[A, 16 n] -> [A, n]``: the pairwise tree sum of each run of 16 (``reference.tree_sum``)."""
    return pair_sum(pair_sum(pair_sum(pair_sum(t))))


@triton.jit
def tree_sum128(t):
    """``[A, 128] -> [A]``: the same pairwise tree over one EDEN group."""
    s = pair_sum(pair_sum(pair_sum(pair_sum(t))))
    return tl.reshape(pair_sum(pair_sum(pair_sum(s))), (t.shape[0],))


@triton.jit
def tensor_scale(amax, value_max_times_scale_max):
    """``s_t`` of SPEC 2 from the tensor amax: 1 for an all-zero tensor, held at the smallest
    normal float32, NaN for non-finite input (amax is +inf then)."""
    s_t = tl.maximum(tl.math.div_rn(amax, value_max_times_scale_max), FP32_MIN_NORMAL)
    s_t = tl.where(amax == 0.0, 1.0, s_t)
    return tl.where(amax == float("inf"), float("nan"), s_t)


@triton.jit
def pack_codes(codes):
    """``[R, 2n]`` codes -> ``[R, n]`` uint8 bytes, element 2i in the low nibble."""
    lo, hi = tl.split(tl.reshape(codes, (codes.shape[0], codes.shape[1] // 2, 2)))
    return (lo | (hi << 4)).to(tl.uint8)
