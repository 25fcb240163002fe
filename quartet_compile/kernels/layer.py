"""The quantized linear layer from the Triton kernels: the forward/backward protocol of
:mod:`quartet_compile.reference.layer`, on CUDA tensors, for every quantized numerics.

Forward: RTN or 4/6 (``quartet2``, ``quartet2-no46``, ``fp4-forward``), and RTN with 16x16
weight tiles (``nvidia``). Backward: MS-EDEN (``quartet2``, ``quartet2-no46``), SR with RHT-16
on the weight gradient (``nvidia``), and the high-precision GEMMs of ``fp4-forward`` on the
dequantized saved operands (in the gradient's dtype: float32 gradients take float32 GEMMs).

GEMMs: with ``native`` (a datacenter Blackwell GPU that passed the native kernel's first-use
check, decided by the caller before any tracing) the quantizers write packed codes and
:func:`.blackwell.dot_scaled_gemm` multiplies them on the block-scaled FP4 tensor cores where
the reduction is a multiple of 128; otherwise they write the exact unscaled bf16 operands for
:func:`.gemm.unscaled_gemm`. The ``nvidia`` dgrad multiplies by the dequantized saved weight
(its 16x16 tiles are quantized along the other axis) and ``fp4-forward``'s backward is high
precision, so both keep the bf16 route.

Randomness of the backward comes from ``source`` (PyTorch's default CUDA generator unless a
stream of the backend's own is given) as one draw of int64 Philox seeds, a device tensor, so
CUDA-graph replays draw fresh values: one seed per stochastically quantized operand, then one
from which the rotation kernel draws the signs (128 for MS-EDEN, 16 for ``nvidia``). That launch
also zeroes the amax rows of all the backward's quantizers; the forward's two quantizers share
one zeroed buffer.

A GEMM's two operands are quantized together, one launch per pass for both
(:func:`.quantize.quantize_pair`), and the four MS-EDEN operands of both backward GEMMs take one
launch per pass (:func:`.ms_eden.ms_eden_gemms`): launches, not bytes, set the host time of a
compiled step at ordinary model sizes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nvfp4.format import NVFP4Tensor
from ..nvfp4.numerics import EDEN_GROUP, NVIDIA_RHT_SIZE, BackwardQuant, ForwardQuant, Numerics
from ..nvfp4.randomness import RandomSource, as_generator
from ..nvfp4.saved import Saved
from .blackwell import NATIVE_K_MULTIPLE, dot_scaled_gemm
from .dequantize import dequantize_unscaled
from .gemm import unscaled_gemm
from .launch import realized
from .ms_eden import Operand, ms_eden_gemms
from .nvidia import nvidia_quantize
from .quantize import Quantized, quantize, quantize_pair, stats_scratch
from .rotation import random_rotation


def operands(native: bool, k: int) -> dict[str, bool]:
    """What the quantizers of a GEMM reducing over ``k`` write: packed codes where the native
    Blackwell GEMM runs, else the exact unscaled bf16 operands (``codes`` and ``unscaled_bf16``
    keyword arguments of the quantize kernels)."""
    packed = native and k % NATIVE_K_MULTIPLE == 0
    return {"codes": packed, "unscaled_bf16": not packed}


def nvfp4_gemm(a: Quantized, b: Quantized, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """``deq(a) deq(b)^T``: on the FP4 tensor cores when the quantizers wrote codes only
    (:func:`operands`), else from the exact unscaled bf16 operands."""
    if a.unscaled_bf16 is None:
        return dot_scaled_gemm(a.fp4, b.fp4, out_dtype, bias)
    return unscaled_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, out_dtype, bias)


def weight_operand(weight: Tensor, numerics: Numerics, *, native: bool = False) -> Quantized:
    """What :func:`forward` multiplies by, for a weight that several forwards share (the
    inference path quantizes a weight once per parameter version): its FP4 form, with the
    unscaled bf16 operand where the GEMM takes one."""
    if not numerics.quantized:
        raise ValueError(f"the kernels implement quantized numerics only, not {numerics}")
    four_over_six = numerics.forward is ForwardQuant.FOUR_OVER_SIX
    tile_2d = numerics.forward is ForwardQuant.NVIDIA
    unscaled_bf16 = operands(native, weight.shape[1])["unscaled_bf16"]
    return quantize(weight, four_over_six=four_over_six, tile_2d=tile_2d, unscaled_bf16=unscaled_bf16)


def forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    numerics: Numerics,
    *,
    native: bool = False,
    operand: Quantized | None = None,
) -> tuple[Tensor, Saved]:
    """``x [T, K] @ weight [N, K]^T + bias``: quantize both (RTN, 4/6, or for ``nvidia`` RTN
    with 16x16 weight tiles), one NVFP4 GEMM. ``nvidia`` saves ``x`` itself (its backward
    rotates it), so its FP4 codes are written only for a native GEMM. ``operand``: the weight's
    :func:`weight_operand`, when it is already quantized (``weight`` is then not read)."""
    if not numerics.quantized:
        raise ValueError(f"the kernels implement quantized numerics only, not {numerics}")
    numerics.check_shapes(x.shape[0], x.shape[1], (weight if operand is None else operand.fp4).shape[0])
    x, weight = realized(x), None if weight is None else realized(weight)
    four_over_six = numerics.forward is ForwardQuant.FOUR_OVER_SIX
    nvidia = numerics.forward is ForwardQuant.NVIDIA
    route = operands(native, x.shape[1])
    codes, unscaled_bf16 = route["codes"] or not nvidia, route["unscaled_bf16"]
    if operand is not None:
        xq, wq = quantize(x, four_over_six=four_over_six, codes=codes, unscaled_bf16=unscaled_bf16), operand
    elif nvidia:
        stats = stats_scratch(2, x.device)
        xq = quantize(x, codes=codes, unscaled_bf16=unscaled_bf16, stats=stats)
        wq = quantize(weight, tile_2d=True, unscaled_bf16=unscaled_bf16, stats=stats, stats_row=1)
    else:
        xq, wq = quantize_pair(x, weight, four_over_six=four_over_six, x_codes=codes, unscaled_bf16=unscaled_bf16)
    saved = Saved(x=x, wq=wq.fp4) if numerics.saves_x else Saved(xq=xq.fp4, wq=wq.fp4)
    return nvfp4_gemm(xq, wq, x.dtype, bias), saved


def _randomness(count: int, source: RandomSource, grad: Tensor) -> list[Tensor]:
    """``count`` int64 Philox seeds as 0-d device tensors, in one draw from ``source``: one per
    stochastically quantized operand, then one for the rotation signs.

    The default generator's draw is made from a tensor created from ``grad`` (``randint_like``
    takes the same values as ``randint``): in a compiled graph it then depends on the gradient
    and stays in the backward. A draw with no inputs is also kept in the forward graph when
    random ops count as side effects (``torch._inductor.config.fallback_random``), where it
    would consume the stream a second time and shift every later draw."""
    generator = as_generator(source, grad.device)
    if generator is not None:
        return list(torch.randint(0, 2**62, (count,), device=grad.device, generator=generator).unbind())
    return list(torch.randint_like(grad.new_empty(count, dtype=torch.int64), 0, 2**62).unbind())


def _backward_ms_eden(grad, saved, dtypes, needs, source, native):
    """Quartet II: MS-EDEN on both operands of dgrad (along N) and wgrad (along T). One draw of
    five seeds; the rotation's launch also zeroes the four amax rows; both GEMMs' operands are
    quantized together (:func:`.ms_eden.ms_eden_gemms`)."""
    seeds = _randomness(5, source, grad)
    stats = torch.empty(4, 2, dtype=torch.float32, device=grad.device)
    rotation = random_rotation(EDEN_GROUP, seeds[4], zero=stats)
    gemms = {}
    if needs[0]:
        route = operands(native, saved.wq.codes.shape[0])
        gemms[0] = (Operand(grad, seeds[0], False, **route), Operand(saved.wq, seeds[1], True, **route))
    if needs[1]:
        route = operands(native, saved.xq.codes.shape[0])
        gemms[1] = (Operand(grad, seeds[2], True, **route), Operand(saved.xq, seeds[3], True, **route))
    grads: list[Tensor | None] = [None, None]
    for i, (aq, bq) in zip(gemms, ms_eden_gemms(list(gemms.values()), rotation, stats), strict=True):
        grads[i] = nvfp4_gemm(aq, bq, dtypes[i])
    return grads[0], grads[1]


def _dequantized_gemm(a: Tensor, saved: NVFP4Tensor, scale_a: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``(a deq(saved)) scale_a``: the saved operand's exact unscaled values in ``a``'s dtype,
    transposed so that the reduction runs along its rows, both tensor scales in the epilogue."""
    b = dequantize_unscaled(saved, transpose=True, dtype=a.dtype)
    return unscaled_gemm(a, b, scale_a, saved.tensor_scale, out_dtype)


def _backward_high_precision(grad, saved, dtypes, needs, source, native):
    """``fp4-forward``: the two GEMMs of autograd's linear backward on the dequantized saved
    operands, float32 accumulation."""
    one = grad.new_ones((), dtype=torch.float32)
    dx = _dequantized_gemm(grad, saved.wq, one, dtypes[0]) if needs[0] else None
    dw = _dequantized_gemm(grad.T, saved.xq, one, dtypes[1]) if needs[1] else None
    return dx, dw


def _backward_nvidia(grad, saved, dtypes, needs, source, native):
    """``nvidia``: SR of ``g`` against the saved 16x16-tile weight for dgrad; RHT-16 along the
    tokens, then SR of ``g^T`` and RTN of ``x^T``, for wgrad."""
    seeds = _randomness(3, source, grad)
    stats = torch.empty(3, 2, dtype=torch.float32, device=grad.device)
    rotation = random_rotation(NVIDIA_RHT_SIZE, seeds[2], zero=stats)
    dx = dw = None
    if needs[0]:
        gq = nvidia_quantize(grad, seed=seeds[0], stats=stats, stats_row=0, codes=False, unscaled_bf16=True)
        dx = _dequantized_gemm(gq.unscaled_bf16, saved.wq, gq.tensor_scale, dtypes[0])
    if needs[1]:
        options = {**operands(native, grad.shape[0]), "rotation": rotation, "transpose": True, "stats": stats}
        gtq = nvidia_quantize(grad, seed=seeds[1], stats_row=1, **options)
        xtq = nvidia_quantize(saved.x, seed=None, stats_row=2, **options)
        dw = nvfp4_gemm(gtq, xtq, dtypes[1])
    return dx, dw


_BACKWARDS = {
    BackwardQuant.NONE: _backward_high_precision,
    BackwardQuant.MS_EDEN: _backward_ms_eden,
    BackwardQuant.NVIDIA: _backward_nvidia,
}


def backward(
    grad: Tensor,
    saved: Saved,
    numerics: Numerics,
    *,
    dtypes: tuple[torch.dtype, torch.dtype],
    needs: tuple[bool, bool] = (True, True),
    source: RandomSource = None,
    native: bool = False,
) -> tuple[Tensor | None, Tensor | None]:
    """``(dx [T, K], dW [N, K])`` for ``grad [T, N]`` with the numerics' backward; ``None`` where
    not ``needs``."""
    return _BACKWARDS[numerics.backward](realized(grad), saved, dtypes, needs, source, native)
