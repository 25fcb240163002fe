"""The reference quantized linear layer ``y = x W^T + b`` for every recipe (SPEC 4-5).

:func:`linear_forward` and :func:`linear_backward` are the numerics; the autograd Function
here and the ``quartet::linear`` custom op (``quartet_compile.ops``) both call them.

Backward randomness is drawn in a fixed order from one source: the rotation signs first,
then the dgrad operands (``g``, then the weight), then the wgrad operands (``g^T``, then
the activation). A generator advances between calls, so every backward call draws new
signs; the same seed gives the same gradients bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import BackwardQuant, ForwardQuant, QuartetConfig, Recipe
from .hadamard import rht
from .nvfp4 import BLOCK, NVFP4Tensor, nvfp4_matmul
from .quantizers import (
    EDEN_GROUP,
    quantize_four_over_six,
    quantize_ms_eden,
    quantize_rtn,
    quantize_rtn_2d,
    quantize_sr,
)
from .randomness import RandomSource, as_generator, random_signs

NVIDIA_RHT_SIZE = 16


def required_multiples(config: QuartetConfig) -> dict[str, int]:
    """What each GEMM dimension must divide into for ``config`` (``T`` tokens, ``K`` in
    features, ``N`` out features); the backend pads or keeps BF16 where this fails."""
    multiples = {"T": 1, "K": 1, "N": 1}
    if config.forward_quant is not ForwardQuant.NONE:
        multiples["K"] = BLOCK
    if config.backward_quant is BackwardQuant.MS_EDEN:
        multiples.update(T=EDEN_GROUP, N=EDEN_GROUP)
    if config.backward_quant is BackwardQuant.NVIDIA:
        multiples.update(T=NVIDIA_RHT_SIZE, N=BLOCK)
    return multiples


def check_shapes(config: QuartetConfig, tokens: int, in_features: int, out_features: int) -> None:
    """Raise ``ValueError`` naming the dimension that ``config`` cannot quantize."""
    sizes = {"T": tokens, "K": in_features, "N": out_features}
    for dim, multiple in required_multiples(config).items():
        if sizes[dim] % multiple:
            raise ValueError(
                f"recipe {config.recipe.value!r} needs {dim} to be a multiple of {multiple}, "
                f"got T={tokens}, K={in_features}, N={out_features}"
            )


@dataclass(frozen=True)
class Saved:
    """What the forward keeps for the backward: FP4 operands, and the high-precision ones
    only where the recipe's backward reads them (``nvidia``: ``x``; ``bf16``: both)."""

    x: Tensor | None = None
    weight: Tensor | None = None
    xq: NVFP4Tensor | None = None
    wq: NVFP4Tensor | None = None

    def flatten(self) -> tuple[list[Tensor | None], tuple]:
        """Tensors for ``save_for_backward`` (``None`` where absent) and what rebuilds them."""
        tensors: list[Tensor | None] = [self.x, self.weight]
        meta = []
        for q in (self.xq, self.wq):
            tensors += [q.codes, q.scales, q.tensor_scale] if q is not None else [None] * 3
            meta.append(None if q is None else (q.shape, q.dtype))
        return tensors, tuple(meta)

    @classmethod
    def unflatten(cls, tensors: tuple[Tensor | None, ...], meta: tuple) -> Saved:
        x, weight, *parts = tensors
        xq, wq = (NVFP4Tensor(*parts[3 * i : 3 * i + 3], *m) if m is not None else None for i, m in enumerate(meta))
        return cls(x, weight, xq, wq)


def _quantize_forward(kind: ForwardQuant, x: Tensor, *, weight: bool) -> NVFP4Tensor:
    if kind is ForwardQuant.FOUR_OVER_SIX:
        return quantize_four_over_six(x)
    if kind is ForwardQuant.NVIDIA and weight:
        return quantize_rtn_2d(x)
    return quantize_rtn(x)


def linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig) -> tuple[Tensor, Saved]:
    """``x [T, K] @ weight [N, K]^T + bias`` in ``x``'s dtype, and what the backward needs."""
    check_shapes(config, x.shape[0], x.shape[1], weight.shape[0])
    kind = config.forward_quant
    if kind is ForwardQuant.NONE:
        return torch.nn.functional.linear(x, weight, bias), Saved(x=x, weight=weight)
    xq = _quantize_forward(kind, x, weight=False)
    wq = _quantize_forward(kind, weight, weight=True)
    saved = Saved(x=x, wq=wq) if config.backward_quant is BackwardQuant.NVIDIA else Saved(xq=xq, wq=wq)
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


def linear_backward(
    grad: Tensor,
    saved: Saved,
    config: QuartetConfig,
    *,
    dtypes: tuple[torch.dtype, torch.dtype],
    needs: tuple[bool, bool] = (True, True),
    source: RandomSource = None,
) -> tuple[Tensor | None, Tensor | None]:
    """``(dx [T, K], dW [N, K])`` in ``dtypes`` for ``grad [T, N]``; ``None`` where not ``needs``."""
    return _BACKWARDS[config.backward_quant](grad, saved, dtypes, *needs, source)


class QuartetLinearFunction(torch.autograd.Function):
    """``x [..., K] @ weight [N, K]^T + bias`` with the numerics of ``config.recipe``."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig, source: RandomSource
    ) -> Tensor:
        y, saved = linear_forward(x.reshape(-1, x.shape[-1]), weight, bias, config)
        ctx.config, ctx.source = config, source
        ctx.x_shape, ctx.dtypes = x.shape, (x.dtype, weight.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        tensors, ctx.saved_meta = saved.flatten()
        ctx.save_for_backward(*tensors)
        return y.reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        needs_dx, needs_dw, needs_db = ctx.needs_input_grad[:3]
        g = grad_out.reshape(-1, grad_out.shape[-1])
        dx, dw = linear_backward(
            g,
            Saved.unflatten(ctx.saved_tensors, ctx.saved_meta),
            ctx.config,
            dtypes=ctx.dtypes,
            needs=(needs_dx, needs_dw),
            source=ctx.source,
        )
        if dx is not None:
            dx = dx.reshape(ctx.x_shape)
        db = g.float().sum(0).to(ctx.bias_dtype) if needs_db and ctx.bias_dtype is not None else None
        return dx, dw, db, None, None


def quartet_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    config: QuartetConfig | Recipe | str = Recipe.QUARTET2,
    source: RandomSource = None,
) -> Tensor:
    """Functional reference linear. ``source``: generator or seed for the stochastic backward
    (``None``: the default generator, so ``torch.manual_seed`` makes runs reproducible)."""
    if not isinstance(config, QuartetConfig):
        config = QuartetConfig(recipe=Recipe(config))
    return QuartetLinearFunction.apply(x, weight, bias, config, source)
