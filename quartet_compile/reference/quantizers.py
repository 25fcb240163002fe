"""The NVFP4 quantizers of SPEC sections 2-3: RTN, 4/6, E2M1 SR and MS-EDEN.

Float32 operation order is part of the contract (kernels reproduce it bit-for-bit):
``s_t = amax / fp32(F * S)``, ``s_b = e4m3((block_amax / fp32(F)) [* 1.5] / s_t)``,
``u = x / (s_b * s_t)``, ``deq = (e2m1 * s_b) * s_t``; the 4/6 block error is
``sum(((u - e2m1) * s_b)^2)`` (see :func:`_block_squared_error`); every sum (4/6 errors, EDEN
dot products) is a pairwise tree over adjacent elements (:func:`tree_sum`).

Non-finite input (NaN or +-Inf anywhere) gives a NaN tensor scale, so the whole tensor
dequantizes to NaN: overflow stays visible, as it would in BF16, never silently clipped.
A tensor scale that would underflow float32's normal range (amax below ~3e-35) is held at
the smallest normal float32, which only leaves some E4M3 range unused. A rounded-up scale
can make a dequantized value up to 1/16 larger than its input, so inputs within 6% of
float32's maximum may dequantize to +-Inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..nvfp4.format import BLOCK, E2M1_MAX, E4M3_MAX, NVFP4Tensor, decode_e2m1, pack_e2m1
from ..nvfp4.numerics import (
    EDEN_GROUP,
    FOUR_OVER_SIX_ALT_FACTOR,
    FOUR_OVER_SIX_SCALE_MAX,
    MS_EDEN_SCALE_MAX,
    MS_EDEN_SCALE_OVERRIDE,
    SR_SCALE_OVERRIDE,
)
from ..nvfp4.randomness import RandomSource, uniform
from .hadamard import rht
from .rounding import round_to_e2m1, round_to_e4m3, stochastic_round_to_e2m1, stochastic_round_to_e4m3

_FP32_MIN_NORMAL = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class _Scaled:
    """One RTN candidate: float32 scales on the E4M3 grid, codes, and the scaled input."""

    tensor_scale: Tensor
    block_scales: Tensor  # [rows, K/16]
    codes: Tensor  # [rows, K/16, 16], unpacked
    u: Tensor  # x / (s_b * s_t), [rows, K/16, 16]


def _blocks(x: Tensor, multiple: int = BLOCK) -> Tensor:
    """float32 ``[rows, K/16, 16]`` view of ``x`` quantized along its last dimension."""
    if x.dim() == 0 or x.shape[-1] % multiple:
        raise ValueError(
            f"NVFP4 quantization along the last dimension needs it to be a multiple of {multiple}; "
            f"got shape {tuple(x.shape)} (pad K with zeros, which leaves products unchanged)"
        )
    return x.detach().float().reshape(math.prod(x.shape[:-1]), x.shape[-1] // BLOCK, BLOCK)


def _divide(x: Tensor, constant: float) -> Tensor:
    """``x / fp32(constant)`` as a correctly rounded division on every device: a 0-d divisor
    on ``x``'s device, since dividing a CUDA tensor by a host scalar multiplies by its
    rounded reciprocal instead (1 ulp off for some inputs)."""
    return x / torch.full((), constant, dtype=torch.float32, device=x.device)


def _tensor_scale(amax: Tensor, value_max: float, scale_max: float) -> Tensor:
    s_t = _divide(amax, value_max * scale_max)
    s_t = torch.where(amax == 0, 1.0, s_t.clamp(min=_FP32_MIN_NORMAL))
    return torch.where(torch.isfinite(amax), s_t, torch.nan)


def _block_scales(block_amax: Tensor, value_max: float, s_t: Tensor, factor: float | None = None) -> Tensor:
    target = _divide(block_amax, value_max)
    if factor is not None:
        target = target * factor
    s_b = round_to_e4m3(target / s_t)
    return torch.where(s_b == 0, 1.0, s_b)


def _round(xb: Tensor, s_t: Tensor, s_b: Tensor) -> _Scaled:
    u = xb / (s_b * s_t).unsqueeze(-1)
    return _Scaled(s_t, s_b, round_to_e2m1(u), u)


def _rtn(xb: Tensor, value_max: float, scale_max: float, block_amax: Tensor | None = None) -> _Scaled:
    s_t = _tensor_scale(xb.abs().amax() if xb.numel() else xb.new_zeros(()), value_max, scale_max)
    if block_amax is None:
        block_amax = xb.abs().amax(-1)
    return _round(xb, s_t, _block_scales(block_amax, value_max, s_t))


def tree_sum(t: Tensor, dims: int = 1) -> Tensor:
    """Sum over the last ``dims`` dimensions (a power-of-two count) as a pairwise tree of
    adjacent elements: one fixed float32 rounding order on every device, which a kernel can
    reproduce, where ``Tensor.sum`` reduces in a backend-specific order."""
    t = t.flatten(-dims) if dims > 1 else t
    while t.shape[-1] > 1:
        t = t[..., 0::2] + t[..., 1::2]
    return t.squeeze(-1)


def _block_squared_error(c: _Scaled) -> Tensor:
    """``sum (x - deq)^2 / s_t^2`` per block, as ``sum ((u - e2m1) * s_b)^2``: the 4/6 rule
    only compares candidates sharing ``s_t``, and this form neither overflows nor underflows
    float32 at extreme magnitudes, so the choice is invariant to power-of-two rescaling."""
    return tree_sum(((c.u - decode_e2m1(c.codes)) * c.block_scales.unsqueeze(-1)).square())


def _pack(c: _Scaled, like: Tensor) -> NVFP4Tensor:
    """The container in NVFP4's row-major layout, whatever the strides of the input were (a
    transposed weight's block maxima come out column-major)."""
    return NVFP4Tensor(
        codes=pack_e2m1(c.codes.flatten(1)).contiguous(),
        scales=c.block_scales.to(torch.float8_e4m3fn).contiguous(),
        tensor_scale=c.tensor_scale,
        shape=like.shape,
        dtype=like.dtype,
    )


def quantize_rtn(x: Tensor, *, scale_override: float = 1.0, scale_max: float = E4M3_MAX) -> NVFP4Tensor:
    """Round-to-nearest NVFP4 ("6": each block max maps to ``6 / scale_override``)."""
    return _pack(_rtn(_blocks(x), E2M1_MAX / scale_override, scale_max), x)


def quantize_rtn_2d(x: Tensor) -> NVFP4Tensor:
    """RTN with one scale per 16x16 tile (the NVIDIA recipe's weights): a tile's scale is
    stored once per row, so the tensor and its transpose share the same quantization."""
    xb = _blocks(x)
    if xb.shape[0] % BLOCK:
        raise ValueError(f"16x16 block scaling needs rows to be a multiple of 16, got {xb.shape[0]}")
    tile_amax = xb.abs().amax(-1).unflatten(0, (-1, BLOCK)).amax(1, keepdim=True)
    block_amax = tile_amax.expand(-1, BLOCK, -1).flatten(0, 1)
    return _pack(_rtn(xb, E2M1_MAX, E4M3_MAX, block_amax), x)


def _four_over_six(xb: Tensor, value_max: float) -> _Scaled:
    six = _rtn(xb, value_max, FOUR_OVER_SIX_SCALE_MAX)
    four = _round(
        xb, six.tensor_scale, _block_scales(xb.abs().amax(-1), value_max, six.tensor_scale, FOUR_OVER_SIX_ALT_FACTOR)
    )
    err_six, err_four = _block_squared_error(six), _block_squared_error(four)
    pick_four = err_four < err_six  # ties keep "6"
    return _Scaled(
        six.tensor_scale,
        torch.where(pick_four, four.block_scales, six.block_scales),
        torch.where(pick_four.unsqueeze(-1), four.codes, six.codes),
        torch.where(pick_four.unsqueeze(-1), four.u, six.u),
    )


def quantize_four_over_six(x: Tensor, *, scale_override: float = 1.0) -> NVFP4Tensor:
    """4/6: per block keep whichever of "max -> 6" and "max -> 4" has the smaller squared
    error (ties keep 6); scale ceiling 256 so the x1.5 alternative scale still fits E4M3."""
    return _pack(_four_over_six(_blocks(x), E2M1_MAX / scale_override), x)


def quantize_sr(x: Tensor, *, source: RandomSource = None, uniforms: Tensor | None = None) -> NVFP4Tensor:
    """E2M1 stochastic rounding with RTN E4M3 scales; the 17/16 headroom keeps every scaled
    value inside [-6, 6] so the estimate is unbiased. ``uniforms``: one draw per element."""
    c = _rtn(_blocks(x), E2M1_MAX / SR_SCALE_OVERRIDE, E4M3_MAX)
    if uniforms is None:
        uniforms = uniform(c.u.shape, source, c.u.device)
    codes = stochastic_round_to_e2m1(c.u, uniforms.reshape(c.u.shape))
    return _pack(_Scaled(c.tensor_scale, c.block_scales, codes, c.u), x)


def quantize_ms_eden(
    x: Tensor, signs: Tensor, *, source: RandomSource = None, uniforms: Tensor | None = None
) -> NVFP4Tensor:
    """MS-EDEN (SPEC 3): RHT-128 with ``signs``, then :func:`quantize_ms_eden_rotated`.
    Returns the quantized *rotated* tensor; the rotation cancels in a product whose other
    operand used the same signs."""
    _blocks(x, EDEN_GROUP)
    rows = math.prod(x.shape[:-1])
    return quantize_ms_eden_rotated(rht(x.reshape(rows, x.shape[-1]), signs), source=source, uniforms=uniforms, like=x)


def quantize_ms_eden_rotated(
    xr: Tensor, *, source: RandomSource = None, uniforms: Tensor | None = None, like: Tensor | None = None
) -> NVFP4Tensor:
    """Steps 2-4 of MS-EDEN on an already rotated tensor: RTN with headroom, the per-128-group
    EDEN correction ``<u,u>/<u,q>`` folded into the block scales, which are then rounded to
    E4M3 stochastically (``uniforms``: one draw per block). Kernels rotate on tensor cores,
    whose float32 accumulation order differs from ours, so their quantization stage is
    checked bit for bit against this function fed their rotated tensor."""
    xb = _blocks(xr, EDEN_GROUP)
    c = _rtn(xb, E2M1_MAX / MS_EDEN_SCALE_OVERRIDE, MS_EDEN_SCALE_MAX)
    per_group = (xb.shape[0], xb.shape[1] * BLOCK // EDEN_GROUP, EDEN_GROUP // BLOCK, BLOCK)
    u, q = c.u.reshape(per_group), decode_e2m1(c.codes).reshape(per_group)
    numerator = tree_sum(u * u, dims=2)
    denominator = tree_sum(u * q, dims=2)
    correction = torch.where(denominator == 0, 1.0, numerator / denominator)
    corrected = (c.block_scales.reshape(per_group[:-1]) * correction.unsqueeze(-1)).flatten(-2)
    if uniforms is None:
        uniforms = uniform(corrected.shape, source, corrected.device)
    block_scales = stochastic_round_to_e4m3(corrected, uniforms.reshape(corrected.shape))
    return _pack(_Scaled(c.tensor_scale, block_scales, c.codes, c.u), xr if like is None else like)
