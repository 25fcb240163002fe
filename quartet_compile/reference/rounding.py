"""Rounding onto the NVFP4 element and scale grids: E2M1 codes and E4M3 scales, to nearest-even
and stochastically (SPEC sections 1 and 3).

Rounding is written with exact float32 arithmetic (power-of-two scaling, comparisons,
``torch.round``'s half-to-even) instead of dtype casts, so the same rule can be ported
bit-for-bit to kernels and fed explicit uniform draws for the stochastic variants.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nvfp4.format import E2M1_MAX, E4M3_MAX, e2m1_magnitudes

# Midpoint between magnitude codes k and k+1. At a tie the even code wins, so the
# comparison is strict (stay on k) when k is even and inclusive (move up) when k is odd.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_E4M3_MIN_NORMAL_EXP = -6
_E4M3_MANTISSA_BITS = 3


def _with_sign(magnitude_codes: Tensor, x: Tensor) -> Tensor:
    return magnitude_codes | (torch.signbit(x).to(torch.uint8) << 3)


def round_to_e2m1(u: Tensor) -> Tensor:
    """Round-to-nearest-even onto the E2M1 grid, saturating at 6; returns uint8 codes.

    The sign bit follows ``signbit(u)`` (``-0.0`` and tiny negatives give code 8, as the
    PTX ``cvt.rn.satfinite.e2m1x2`` does). NaN maps to a (signed) zero code: callers
    make non-finite tensors visible through a NaN tensor scale instead.
    """
    mag = u.abs()
    code = torch.zeros(u.shape, dtype=torch.uint8, device=u.device)
    for k, midpoint in enumerate(_E2M1_MIDPOINTS):
        code += (mag > midpoint if k % 2 == 0 else mag >= midpoint).to(torch.uint8)
    return _with_sign(code, u)


def stochastic_round_to_e2m1(u: Tensor, uniforms: Tensor) -> Tensor:
    """Round |u| up to the next E2M1 magnitude with probability equal to the fractional
    distance (``uniform < p``), so ``E[decode(code)] = u`` for ``|u| <= 6``. Larger
    magnitudes saturate to 6 (biased: the quantizers' scale headroom keeps them away)."""
    mags = e2m1_magnitudes(u.device)
    mag = u.abs().clamp(max=E2M1_MAX)
    low = (torch.bucketize(mag, mags, right=True) - 1).clamp(0, len(mags) - 1)
    high = (low + 1).clamp(max=len(mags) - 1)
    step = mags[high] - mags[low]
    prob_up = torch.where(step > 0, (mag - mags[low]) / torch.where(step > 0, step, 1.0), 0.0)
    code = (low + (uniforms < prob_up).long()).to(torch.uint8)
    return _with_sign(code, u)


def _e4m3_ulp(magnitude: Tensor) -> Tensor:
    """Spacing of the E4M3 grid around a non-negative float32 magnitude."""
    _, exponent = torch.frexp(magnitude)  # magnitude = m * 2**exponent, m in [0.5, 1)
    binade = (exponent - 1).clamp(min=_E4M3_MIN_NORMAL_EXP)
    return torch.ldexp(torch.ones_like(magnitude), binade - _E4M3_MANTISSA_BITS)


def round_to_e4m3(x: Tensor) -> Tensor:
    """Round-to-nearest-even onto the finite E4M3 grid (saturating at +-448).

    Returns float32 values that cast losslessly to ``torch.float8_e4m3fn``; equals
    ``x.to(torch.float8_e4m3fn)`` for every finite float32 (tested exhaustively on a grid).
    """
    x = x.float()
    mag = x.abs().clamp(max=E4M3_MAX)
    ulp = _e4m3_ulp(mag)
    return torch.copysign(torch.round(mag / ulp) * ulp, x)


def stochastic_round_to_e4m3(x: Tensor, uniforms: Tensor) -> Tensor:
    """Round a non-negative float32 onto one of its two neighbouring E4M3 values, up with
    probability proportional to closeness (``uniform < p``); unbiased below 448, where
    it saturates."""
    mag = x.float().clamp(min=0.0, max=E4M3_MAX)
    ulp = _e4m3_ulp(mag)
    low = torch.floor(mag / ulp) * ulp
    prob_up = (mag - low) / ulp
    return torch.where(uniforms < prob_up, low + ulp, low)
