"""The quantized linear layer on CUDA from the Triton kernels: what ``quartet::linear`` and
``quartet::linear_backward`` run on a CUDA tensor (``quartet_compile.ops`` dispatches here).

Covered: every quantized recipe. Forward: RTN or 4/6 (``quartet2``, ``quartet2-no46``,
``fp4-forward``), and RTN with 16x16 weight tiles (``nvidia``). Backward: MS-EDEN
(``quartet2``, ``quartet2-no46``), SR with RHT-16 on the weight gradient (``nvidia``), and
the high-precision GEMMs of ``fp4-forward`` on the dequantized saved operands (bf16 and
fp16 gradients; a float32 gradient runs the reference, whose float32 GEMMs these would
otherwise round to bf16). ``bf16`` runs the reference, which is ``F.linear``.

GEMMs: on datacenter Blackwell (after the device passed the native kernel's first-use check)
the quantizers write packed codes and :func:`.blackwell.dot_scaled_gemm` multiplies them on
the block-scaled FP4 tensor cores; elsewhere, or where the reduction is not a multiple of 128,
they write the exact unscaled bf16 operands for :func:`.gemm.unscaled_gemm`. The ``nvidia``
dgrad multiplies by the dequantized saved weight (its 16x16 tiles are quantized along the
other axis) and ``fp4-forward``'s backward is BF16, so both keep the bf16 route.

Randomness of the backward comes from the recipe's generator (PyTorch's default CUDA
generator unless a ``seed`` is configured): the rotation signs (128 for MS-EDEN, 16 for
``nvidia``), then one Philox seed per stochastically quantized operand, drawn as device
tensors, so CUDA-graph replays draw fresh values.
Every launch costs host time (the 1B model at batch 1 is bound by it), so the backward
draws the signs in one launch and zeroes the four amax scratch buffers in one, and splits
the seeds and buffers with one ``unbind`` each rather than eight indexing ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import BackwardQuant, ForwardQuant, QuartetConfig
from ..reference import linear as reference
from ..reference.linear import NVIDIA_RHT_SIZE, Saved
from ..reference.nvfp4 import NVFP4Tensor
from ..reference.quantizers import EDEN_GROUP
from ..reference.randomness import RandomSource, as_generator
from .blackwell import NATIVE_K_MULTIPLE, dot_scaled_gemm, native_gemm_available
from .dequantize import dequantize_unscaled
from .gemm import unscaled_gemm
from .ms_eden import ms_eden
from .nvidia import nvidia_quantize
from .quantize import Quantized, quantize
from .rotation import random_rotation


def supports(config: QuartetConfig) -> tuple[bool, bool]:
    """Whether the kernels implement ``config``'s (forward, backward): every quantized recipe."""
    quantized = config.forward_quant is not ForwardQuant.NONE
    return quantized, quantized


def operands(device: torch.device, k: int) -> dict[str, bool]:
    """What the quantizers of a GEMM reducing over ``k`` write: packed codes where the native
    Blackwell GEMM runs, else the exact unscaled bf16 operands (``codes`` and ``unscaled_bf16``
    keyword arguments of the quantize kernels)."""
    native = k % NATIVE_K_MULTIPLE == 0 and native_gemm_available(device)
    return {"codes": native, "unscaled_bf16": not native}


def gemm(a: Quantized, b: Quantized, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """``deq(a) deq(b)^T``: on the FP4 tensor cores when the quantizers wrote codes only
    (:func:`operands`), else from the exact unscaled bf16 operands, the fastest Hopper route at
    every benchmarked shape (``bench/results/kernels.md``: 94-103% of cuBLAS bf16 through the
    TMA GEMM against about 20% for the in-kernel-dequantizing Triton GEMM)."""
    if a.unscaled_bf16 is None:
        return dot_scaled_gemm(a.fp4, b.fp4, out_dtype, bias)
    return unscaled_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, out_dtype, bias)


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig) -> tuple[Tensor, Saved]:
    """``x [T, K] @ weight [N, K]^T + bias``: quantize both (RTN, 4/6, or for ``nvidia`` RTN
    with 16x16 weight tiles), one NVFP4 GEMM. ``nvidia`` saves ``x`` itself (its backward
    rotates it), so its FP4 codes are written only for a native GEMM."""
    four_over_six = config.forward_quant is ForwardQuant.FOUR_OVER_SIX
    nvidia = config.forward_quant is ForwardQuant.NVIDIA
    route = operands(x.device, x.shape[1])
    codes, unscaled_bf16 = route["codes"] or not nvidia, route["unscaled_bf16"]
    xq = quantize(x, four_over_six=four_over_six, codes=codes, unscaled_bf16=unscaled_bf16)
    wq = quantize(weight, four_over_six=four_over_six, tile_2d=nvidia, unscaled_bf16=unscaled_bf16)
    saved = Saved(x=x, wq=wq.fp4) if nvidia else Saved(xq=xq.fp4, wq=wq.fp4)
    return gemm(xq, wq, x.dtype, bias), saved


def _ms_eden_gemm(
    a: Tensor | NVFP4Tensor,
    a_transpose: bool,
    b: NVFP4Tensor,
    rotation: Tensor,
    seeds: Sequence[Tensor],
    stats: Sequence[Tensor],
    out_dtype: torch.dtype,
) -> Tensor:
    """``MS-EDEN(a) MS-EDEN(deq(b)^T)^T``, both rotated by ``rotation`` along the reduction;
    ``seeds``: two 0-d seed tensors; ``stats``: two zeroed amax scratch rows."""
    options = operands(b.codes.device, b.codes.shape[0])
    aq = ms_eden(a, rotation, seeds[0], transpose=a_transpose, stats=stats[0], **options)
    bq = ms_eden(b, rotation, seeds[1], transpose=True, stats=stats[1], **options)
    return gemm(aq, bq, out_dtype)


def _backward_ms_eden(grad, saved, dtypes, needs, source):
    """Quartet II: MS-EDEN on both operands of dgrad (along N) and wgrad (along T)."""
    generator = as_generator(source, grad.device)
    rotation = random_rotation(EDEN_GROUP, generator, grad.device)
    seeds = torch.randint(0, 2**62, (4,), generator=generator, device=grad.device).unbind()
    stats = torch.zeros(4, 2, dtype=torch.float32, device=grad.device).unbind()
    dx = _ms_eden_gemm(grad, False, saved.wq, rotation, seeds[:2], stats[:2], dtypes[0]) if needs[0] else None
    dw = _ms_eden_gemm(grad, True, saved.xq, rotation, seeds[2:], stats[2:], dtypes[1]) if needs[1] else None
    return dx, dw


def _dequantized_gemm(a: Tensor, saved: NVFP4Tensor, scale_a: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``(a deq(saved)) scale_a``: the saved operand's exact unscaled values, transposed so
    that the reduction runs along its rows, with both tensor scales in the epilogue."""
    b = dequantize_unscaled(saved, transpose=True, dtype=a.dtype)
    return unscaled_gemm(a, b, scale_a, saved.tensor_scale, out_dtype)


def _backward_high_precision(grad, saved, dtypes, needs, source):
    """``fp4-forward``: the two GEMMs of autograd's linear backward on the dequantized saved
    operands, float32 accumulation."""
    one = grad.new_ones((), dtype=torch.float32)
    dx = _dequantized_gemm(grad, saved.wq, one, dtypes[0]) if needs[0] else None
    dw = _dequantized_gemm(grad.T, saved.xq, one, dtypes[1]) if needs[1] else None
    return dx, dw


def _backward_nvidia(grad, saved, dtypes, needs, source):
    """``nvidia``: SR of ``g`` against the saved 16x16-tile weight for dgrad; RHT-16 along the
    tokens, then SR of ``g^T`` and RTN of ``x^T``, for wgrad."""
    generator = as_generator(source, grad.device)
    rotation = random_rotation(NVIDIA_RHT_SIZE, generator, grad.device)
    seeds = torch.randint(0, 2**62, (2,), generator=generator, device=grad.device).unbind()
    stats = torch.zeros(3, 2, dtype=torch.float32, device=grad.device).unbind()
    dx = dw = None
    if needs[0]:
        gq = nvidia_quantize(grad, seed=seeds[0], stats=stats[0], codes=False, unscaled_bf16=True)
        dx = _dequantized_gemm(gq.unscaled_bf16, saved.wq, gq.tensor_scale, dtypes[0])
    if needs[1]:
        options = operands(grad.device, grad.shape[0])
        gtq = nvidia_quantize(grad, seed=seeds[1], rotation=rotation, transpose=True, stats=stats[1], **options)
        xtq = nvidia_quantize(saved.x, seed=None, rotation=rotation, transpose=True, stats=stats[2], **options)
        dw = gemm(gtq, xtq, dtypes[1])
    return dx, dw


_BACKWARDS = {
    BackwardQuant.NONE: _backward_high_precision,
    BackwardQuant.MS_EDEN: _backward_ms_eden,
    BackwardQuant.NVIDIA: _backward_nvidia,
}


def linear_backward(
    grad: Tensor,
    saved: Saved,
    config: QuartetConfig,
    *,
    dtypes: tuple[torch.dtype, torch.dtype],
    needs: tuple[bool, bool],
    source: RandomSource,
) -> tuple[Tensor | None, Tensor | None]:
    """``(dx [T, K], dW [N, K])`` for ``grad [T, N]`` with ``config``'s backward; ``None`` where
    not ``needs``."""
    if config.backward_quant is BackwardQuant.NONE and grad.dtype not in (torch.bfloat16, torch.float16):
        return reference.linear_backward(grad, saved, config, dtypes=dtypes, needs=needs, source=source)
    return _BACKWARDS[config.backward_quant](grad, saved, dtypes, needs, source)
