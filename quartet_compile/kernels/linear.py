"""The quantized linear layer on CUDA from the Triton kernels: what ``quartet::linear`` and
``quartet::linear_backward`` run on a CUDA tensor (``quartet_compile.ops`` dispatches here).

Covered: RTN or 4/6 forward (``quartet2``, ``quartet2-no46``, ``fp4-forward``) and the MS-EDEN
backward (``quartet2``, ``quartet2-no46``). Other recipe parts (the ``nvidia`` recipe's
16x16 weight blocks and SR backward, the high-precision backward of ``fp4-forward`` and
``bf16``) run the reference on the GPU, which computes the same numbers more slowly.

Randomness of the backward comes from the recipe's generator (PyTorch's default CUDA
generator unless a ``seed`` is configured): 128 rotation signs, then four Philox seeds, one
per quantized operand, drawn as device tensors, so CUDA-graph replays draw fresh values.
Every launch costs host time (the 1B model at batch 1 is bound by it), so the backward
draws the signs in one launch and zeroes the four amax scratch buffers in one, and splits
the seeds and buffers with one ``unbind`` each rather than eight indexing ops.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..config import BackwardQuant, ForwardQuant, QuartetConfig
from ..reference.linear import Saved
from ..reference.nvfp4 import NVFP4Tensor
from ..reference.quantizers import EDEN_GROUP
from ..reference.randomness import RandomSource, as_generator
from .gemm import unscaled_gemm
from .ms_eden import ms_eden, random_rotation
from .quantize import Quantized, quantize


def supports(config: QuartetConfig) -> tuple[bool, bool]:
    """Whether the kernels implement ``config``'s (forward, backward)."""
    forward = config.forward_quant in (ForwardQuant.RTN, ForwardQuant.FOUR_OVER_SIX)
    backward = forward and config.backward_quant is BackwardQuant.MS_EDEN
    return forward, backward


def gemm(a: Quantized, b: Quantized, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """``deq(a) deq(b)^T`` from the exact unscaled bf16 operands, the fastest Hopper route at
    every benchmarked shape (``bench/results/kernels.md``: 94-103% of cuBLAS bf16 through the
    TMA GEMM against about 20% for the in-kernel-dequantizing Triton GEMM)."""
    return unscaled_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, out_dtype, bias)


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig) -> tuple[Tensor, Saved]:
    """``x [T, K] @ weight [N, K]^T + bias``: quantize both (RTN or 4/6), one NVFP4 GEMM."""
    four_over_six = config.forward_quant is ForwardQuant.FOUR_OVER_SIX
    xq = quantize(x, four_over_six=four_over_six, unscaled_bf16=True)
    wq = quantize(weight, four_over_six=four_over_six, unscaled_bf16=True)
    return gemm(xq, wq, x.dtype, bias), Saved(xq=xq.fp4, wq=wq.fp4)


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
    options = {"codes": False, "unscaled_bf16": True}
    aq = ms_eden(a, rotation, seeds[0], transpose=a_transpose, stats=stats[0], **options)
    bq = ms_eden(b, rotation, seeds[1], transpose=True, stats=stats[1], **options)
    return gemm(aq, bq, out_dtype)


def linear_backward(
    grad: Tensor,
    saved: Saved,
    *,
    dtypes: tuple[torch.dtype, torch.dtype],
    needs: tuple[bool, bool],
    source: RandomSource,
) -> tuple[Tensor | None, Tensor | None]:
    """Quartet II backward: MS-EDEN on both operands of dgrad (along N) and wgrad (along T)."""
    generator = as_generator(source, grad.device)
    rotation = random_rotation(EDEN_GROUP, generator, grad.device)
    seeds = torch.randint(0, 2**62, (4,), generator=generator, device=grad.device).unbind()
    stats = torch.zeros(4, 2, dtype=torch.float32, device=grad.device).unbind()
    dx = _ms_eden_gemm(grad, False, saved.wq, rotation, seeds[:2], stats[:2], dtypes[0]) if needs[0] else None
    dw = _ms_eden_gemm(grad, True, saved.xq, rotation, seeds[2:], stats[2:], dtypes[1]) if needs[1] else None
    return dx, dw
