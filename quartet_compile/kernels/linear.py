"""The quantized linear layer on CUDA from the Triton kernels, registered as the CUDA
implementation of ``quartet::linear`` and ``quartet::linear_backward``.

Covered: RTN or 4/6 forward (``quartet2``, ``quartet2-no46``, ``fp4-forward``) and the MS-EDEN
backward (``quartet2``, ``quartet2-no46``). Other recipe parts (the ``nvidia`` recipe's
16x16 weight blocks and SR backward, the high-precision backward of ``fp4-forward`` and
``bf16``) run the reference on the GPU, which computes the same numbers more slowly.

Randomness of the backward comes from the recipe's generator (PyTorch's default CUDA
generator unless a ``seed`` is configured): 128 rotation signs, then four Philox seeds, one
per quantized operand, drawn as device tensors, so CUDA-graph replays draw fresh values.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config import BackwardQuant, ForwardQuant, QuartetConfig
from ..reference.linear import Saved
from ..reference.nvfp4 import NVFP4Tensor
from ..reference.quantizers import EDEN_GROUP
from ..reference.randomness import RandomSource, as_generator, random_signs
from .gemm import cublas_gemm, dequant_gemm
from .ms_eden import ms_eden, rotation_matrix
from .quantize import Quantized, quantize

DEQUANT_GEMM_MAX_ROWS = 0
"""Products with ``M * N`` up to this many outputs use the in-kernel-dequantizing Triton GEMM,
larger ones the bf16 operands + cuBLAS route (measured in ``bench/kernels.py``)."""


def uses_cublas(m: int, n: int, k: int) -> bool:
    """Route of the product ``[m, k] x [n, k]^T`` (see :data:`DEQUANT_GEMM_MAX_ROWS`)."""
    return k % 128 != 0 or m * n > DEQUANT_GEMM_MAX_ROWS


def supports(config: QuartetConfig) -> tuple[bool, bool]:
    """Whether the kernels implement ``config``'s (forward, backward)."""
    forward = config.forward_quant in (ForwardQuant.RTN, ForwardQuant.FOUR_OVER_SIX)
    backward = forward and config.backward_quant is BackwardQuant.MS_EDEN
    return forward, backward


def gemm(a: Quantized, b: Quantized, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """``deq(a) deq(b)^T`` by whichever route the quantizers were asked to prepare."""
    if a.unscaled_bf16 is not None:
        return cublas_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, out_dtype, bias)
    return dequant_gemm(a.fp4, b.fp4, out_dtype, bias)


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig) -> tuple[Tensor, Saved]:
    """``x [T, K] @ weight [N, K]^T + bias``: quantize both (RTN or 4/6), one NVFP4 GEMM."""
    four_over_six = config.forward_quant is ForwardQuant.FOUR_OVER_SIX
    cublas = uses_cublas(x.shape[0], weight.shape[0], x.shape[1])
    xq = quantize(x, four_over_six=four_over_six, unscaled_bf16=cublas)
    wq = quantize(weight, four_over_six=four_over_six, unscaled_bf16=cublas)
    return gemm(xq, wq, x.dtype, bias), Saved(xq=xq.fp4, wq=wq.fp4)


def _ms_eden_gemm(
    a: Tensor | NVFP4Tensor, a_transpose: bool, b: NVFP4Tensor, rotation: Tensor, seeds: Tensor, out_dtype: torch.dtype
) -> Tensor:
    """``MS-EDEN(a) MS-EDEN(deq(b)^T)^T``, both rotated by ``rotation`` along the reduction."""
    m = a.shape[1] if a_transpose else a.shape[0]
    n = b.shape[1]
    k = a.shape[0] if a_transpose else a.shape[1]
    cublas = uses_cublas(m, n, k)
    kinds = {"codes": not cublas, "unscaled_bf16": cublas}
    aq = ms_eden(a, rotation, seeds[0], transpose=a_transpose, **kinds)
    bq = ms_eden(b, rotation, seeds[1], transpose=True, **kinds)
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
    rotation = rotation_matrix(random_signs(EDEN_GROUP, generator, grad.device))
    seeds = torch.randint(0, 2**62, (4,), generator=generator, device=grad.device)
    dx = _ms_eden_gemm(grad, False, saved.wq, rotation, seeds[:2], dtypes[0]) if needs[0] else None
    dw = _ms_eden_gemm(grad, True, saved.xq, rotation, seeds[2:], dtypes[1]) if needs[1] else None
    return dx, dw
