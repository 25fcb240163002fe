"""The reference quantized linear layer ``y = x W^T + b`` for every recipe (SPEC 4-5): the
forward/backward protocol that :mod:`quartet_compile.kernels.layer` implements too.

Backward randomness is drawn in a fixed order from one source: the rotation signs first,
then the dgrad operands (``g``, then the weight), then the wgrad operands (``g^T``, then
the activation). A generator advances between calls, so every backward call draws new
signs; the same seed gives the same gradients bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..nvfp4.format import NVFP4Tensor
from ..nvfp4.numerics import EDEN_GROUP, NVIDIA_RHT_SIZE, BackwardQuant, ForwardQuant, Numerics
from ..nvfp4.randomness import RandomSource, as_generator, random_signs
from ..nvfp4.saved import Saved
from .hadamard import rht
from .matmul import nvfp4_matmul
from .quantizers import (
    quantize_four_over_six,
    quantize_ms_eden,
    quantize_rtn,
    quantize_rtn_2d,
    quantize_sr,
)


def _quantize_forward(kind: ForwardQuant, x: Tensor, *, weight: bool) -> NVFP4Tensor:
    if kind is ForwardQuant.FOUR_OVER_SIX:
        return quantize_four_over_six(x)
    if kind is ForwardQuant.NVIDIA and weight:
        return quantize_rtn_2d(x)
    return quantize_rtn(x)


def quantize_weight(weight: Tensor, numerics: Numerics) -> NVFP4Tensor:
    """The FP4 weight the forward of ``numerics`` multiplies by (what a checkpoint export writes)."""
    if not numerics.quantized:
        raise ValueError("the recipe does not quantize the forward: there is no FP4 weight")
    return _quantize_forward(numerics.forward, weight, weight=True)


def weight_operand(weight: Tensor, numerics: Numerics) -> NVFP4Tensor:
    """What :func:`forward` multiplies by, for a weight that several forwards share (the
    inference path quantizes a weight once per parameter version)."""
    return quantize_weight(weight, numerics)


def forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, numerics: Numerics, *, operand: NVFP4Tensor | None = None
) -> tuple[Tensor, Saved]:
    """``x [T, K] @ weight [N, K]^T + bias`` in ``x``'s dtype, and what the backward needs;
    ``operand``: the weight's :func:`weight_operand`, when it is already quantized (``weight``
    is then not read)."""
    numerics.check_shapes(x.shape[0], x.shape[1], (weight if operand is None else operand).shape[0])
    kind = numerics.forward
    if kind is ForwardQuant.NONE:
        return torch.nn.functional.linear(x, weight, bias), Saved(x=x, weight=weight)
    xq = _quantize_forward(kind, x, weight=False)
    wq = _quantize_forward(kind, weight, weight=True) if operand is None else operand
    saved = Saved(x=x, wq=wq) if numerics.saves_x else Saved(xq=xq, wq=wq)
    return nvfp4_matmul(xq, wq, x.dtype, bias), saved


def _dequantized_matmul(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    return (a.float() @ b.float()).to(out_dtype)


def _backward_high_precision(g, saved, dtypes, needs_dx, needs_dw, source):
    """bf16 recipe (autograd's own linear backward) and fp4-forward (same GEMMs on the
    dequantized saved operands, float32 math)."""
    x_dtype, w_dtype = dtypes
    if saved.wq is not None:
        x, w = saved.xq.dequantize(torch.float32), saved.wq.dequantize(torch.float32)
        dx = _dequantized_matmul(g, w, x_dtype) if needs_dx else None
        dw = _dequantized_matmul(g.T, x, w_dtype) if needs_dw else None
        return dx, dw
    dx = (g @ saved.weight.to(g.dtype)).to(x_dtype) if needs_dx else None
    dw = (g.T @ saved.x.to(g.dtype)).to(w_dtype) if needs_dw else None
    return dx, dw


def _backward_ms_eden(g, saved, dtypes, needs_dx, needs_dw, source):
    """Quartet II: MS-EDEN on both operands of both GEMMs, one sign vector per call."""
    x_dtype, w_dtype = dtypes
    source = as_generator(source, g.device)
    signs = random_signs(EDEN_GROUP, source, g.device)
    dx = dw = None
    if needs_dx:
        gq = quantize_ms_eden(g, signs, source=source)
        wtq = quantize_ms_eden(saved.wq.dequantize(torch.float32).T, signs, source=source)
        dx = nvfp4_matmul(gq, wtq, x_dtype)
    if needs_dw:
        gtq = quantize_ms_eden(g.T, signs, source=source)
        xtq = quantize_ms_eden(saved.xq.dequantize(torch.float32).T, signs, source=source)
        dw = nvfp4_matmul(gtq, xtq, w_dtype)
    return dx, dw


def _backward_nvidia(g, saved, dtypes, needs_dx, needs_dw, source):
    """NVIDIA recipe: SR gradient against the saved 16x16-block weight for dgrad; RHT-16
    along T, SR gradient and RTN activation for wgrad."""
    x_dtype, w_dtype = dtypes
    source = as_generator(source, g.device)
    signs = random_signs(NVIDIA_RHT_SIZE, source, g.device)
    dx = dw = None
    if needs_dx:
        gq = quantize_sr(g, source=source)
        dx = _dequantized_matmul(gq.dequantize(torch.float32), saved.wq.dequantize(torch.float32), x_dtype)
    if needs_dw:
        gtq = quantize_sr(rht(g.T, signs), source=source)
        xtq = quantize_rtn(rht(saved.x.T, signs))
        dw = nvfp4_matmul(gtq, xtq, w_dtype)
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
) -> tuple[Tensor | None, Tensor | None]:
    """``(dx [T, K], dW [N, K])`` in ``dtypes`` for ``grad [T, N]``; ``None`` where not ``needs``."""
    return _BACKWARDS[numerics.backward](grad, saved, dtypes, *needs, source)
