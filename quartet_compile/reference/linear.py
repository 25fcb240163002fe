"""The reference quantized linear layer ``y = x W^T + b`` for every recipe (SPEC 4-5).

Backward randomness is drawn in a fixed order from one source: the rotation signs first,
then the dgrad operands (``g``, then the weight), then the wgrad operands (``g^T``, then
the activation). A generator advances between calls, so every backward call draws new
signs; the same seed gives the same gradients bit for bit.
"""

from __future__ import annotations

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


def _quantize_forward(kind: ForwardQuant, x: Tensor, *, weight: bool) -> NVFP4Tensor:
    if kind is ForwardQuant.FOUR_OVER_SIX:
        return quantize_four_over_six(x)
    if kind is ForwardQuant.NVIDIA and weight:
        return quantize_rtn_2d(x)
    return quantize_rtn(x)


def _dequantized_matmul(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    return (a.float() @ b.float()).to(out_dtype)


class _Saved:
    """Flattens NVFP4 tensors into ``save_for_backward`` and rebuilds them afterwards."""

    @staticmethod
    def save(ctx: Any, *items: Tensor | NVFP4Tensor) -> None:
        tensors, layout = [], []
        for item in items:
            if isinstance(item, NVFP4Tensor):
                tensors += [item.codes, item.scales, item.tensor_scale]
                layout.append((item.shape, item.dtype))
            else:
                tensors.append(item)
                layout.append(None)
        ctx.save_for_backward(*tensors)
        ctx.saved_layout = layout

    @staticmethod
    def load(ctx: Any) -> list[Tensor | NVFP4Tensor]:
        tensors, items = list(ctx.saved_tensors), []
        for entry in ctx.saved_layout:
            if entry is None:
                items.append(tensors.pop(0))
            else:
                codes, scales, tensor_scale = tensors[:3]
                del tensors[:3]
                items.append(NVFP4Tensor(codes, scales, tensor_scale, *entry))
        return items


class QuartetLinearFunction(torch.autograd.Function):
    """``x [..., K] @ weight [N, K]^T + bias`` with the numerics of ``config.recipe``."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig, source: RandomSource
    ) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        check_shapes(config, x2.shape[0], x2.shape[1], weight.shape[0])
        ctx.config, ctx.source = config, source
        ctx.x_shape, ctx.x_dtype, ctx.w_dtype = x.shape, x.dtype, weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        kind = config.forward_quant
        if kind is ForwardQuant.NONE:
            _Saved.save(ctx, x2, weight)
            return torch.nn.functional.linear(x, weight, bias)
        xq = _quantize_forward(kind, x2, weight=False)
        wq = _quantize_forward(kind, weight, weight=True)
        if config.backward_quant is BackwardQuant.NVIDIA:
            _Saved.save(ctx, x2, wq)
        else:
            _Saved.save(ctx, xq, wq)
        y = nvfp4_matmul(xq, wq, torch.float32)
        if bias is not None:
            y = y + bias.float()
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        needs_dx, needs_dw, needs_db = ctx.needs_input_grad[:3]
        g = grad_out.reshape(-1, grad_out.shape[-1])
        x_saved, w_saved = _Saved.load(ctx)
        dx, dw = _BACKWARDS[ctx.config.backward_quant](ctx, g, x_saved, w_saved, needs_dx, needs_dw)
        if dx is not None:
            dx = dx.reshape(ctx.x_shape)
        db = g.float().sum(0).to(ctx.bias_dtype) if needs_db and ctx.bias_dtype is not None else None
        return dx, dw, db, None, None


def _backward_high_precision(ctx, g, x_saved, w_saved, needs_dx, needs_dw):
    """bf16 recipe (autograd's own linear backward) and fp4-forward (same GEMMs on the
    dequantized saved operands, float32 math)."""
    if isinstance(w_saved, NVFP4Tensor):
        x_saved, w_saved = x_saved.dequantize(torch.float32), w_saved.dequantize(torch.float32)
        dx = _dequantized_matmul(g, w_saved, ctx.x_dtype) if needs_dx else None
        dw = _dequantized_matmul(g.T, x_saved, ctx.w_dtype) if needs_dw else None
        return dx, dw
    dx = (g @ w_saved.to(g.dtype)).to(ctx.x_dtype) if needs_dx else None
    dw = (g.T @ x_saved.to(g.dtype)).to(ctx.w_dtype) if needs_dw else None
    return dx, dw


def _backward_ms_eden(ctx, g, xq, wq, needs_dx, needs_dw):
    """Quartet II: MS-EDEN on both operands of both GEMMs, one sign vector per call."""
    source = as_generator(ctx.source, g.device)
    signs = random_signs(EDEN_GROUP, source, g.device)
    dx = dw = None
    if needs_dx:
        gq = quantize_ms_eden(g, signs, source=source)
        wtq = quantize_ms_eden(wq.dequantize(torch.float32).T, signs, source=source)
        dx = nvfp4_matmul(gq, wtq, ctx.x_dtype)
    if needs_dw:
        gtq = quantize_ms_eden(g.T, signs, source=source)
        xtq = quantize_ms_eden(xq.dequantize(torch.float32).T, signs, source=source)
        dw = nvfp4_matmul(gtq, xtq, ctx.w_dtype)
    return dx, dw


def _backward_nvidia(ctx, g, x, wq, needs_dx, needs_dw):
    """NVIDIA recipe: SR gradient against the saved 16x16-block weight for dgrad; RHT-16
    along T, SR gradient and RTN activation for wgrad."""
    source = as_generator(ctx.source, g.device)
    signs = random_signs(NVIDIA_RHT_SIZE, source, g.device)
    dx = dw = None
    if needs_dx:
        gq = quantize_sr(g, source=source)
        dx = _dequantized_matmul(gq.dequantize(torch.float32), wq.dequantize(torch.float32), ctx.x_dtype)
    if needs_dw:
        gtq = quantize_sr(rht(g.T, signs), source=source)
        xtq = quantize_rtn(rht(x.T, signs))
        dw = nvfp4_matmul(gtq, xtq, ctx.w_dtype)
    return dx, dw


_BACKWARDS = {
    BackwardQuant.NONE: _backward_high_precision,
    BackwardQuant.MS_EDEN: _backward_ms_eden,
    BackwardQuant.NVIDIA: _backward_nvidia,
}


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
