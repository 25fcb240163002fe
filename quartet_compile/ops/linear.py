"""The ``quartet`` custom ops: a quantized linear layer whose forward and backward are single
operators, so AOTAutograd traces both graphs with our ops and nothing opaque.

``quartet::linear`` returns the output and the FP4 tensors the backward needs (the layout of
:class:`~quartet_compile.nvfp4.Saved`); ``quartet::linear_backward`` computes ``(dx, dW)``. Both
run the implementation their ``implementation`` argument names (:mod:`.routing` decided it).
:func:`quantized_linear` is what compiled graphs and the eager API call: it applies autocast the
way ``F.linear`` would and zero-pads shapes the numerics cannot take (padding leaves every
product unchanged), so the ops only ever see aligned shapes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nvfp4.numerics import Numerics
from ..nvfp4.randomness import DEFAULT_STREAM, stream_generator
from ..nvfp4.saved import Saved
from ..reference import layer as reference
from .routing import Implementation


def _layer(implementation: str) -> Any:
    """The module implementing the forward/backward protocol for ``implementation``."""
    if Implementation(implementation) is Implementation.REFERENCE:
        return reference
    from ..kernels import layer as kernels

    return kernels


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The implementations pick their own precisions; an enclosing autocast must not recast
    them. (Checked first: entering ``torch.autocast`` costs host time on every call.)"""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


_LIBRARY = torch.library.Library("quartet", "DEF")
"""The ops are defined with ``torch.library.Library`` rather than ``torch.library.custom_op``,
whose wrapper adds Python layers (an aliasing check, a Dynamo guard) to every call. Our
implementations always return fresh tensors, which is what the aliasing check verifies."""


def _define(name: str, fn: Any) -> None:
    """Define ``quartet::<name>`` with the schema of ``fn``'s type hints, implemented by ``fn``
    for every device (it dispatches to the implementation itself)."""
    _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()))
    _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")


def _forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, numerics: str, implementation: str, rng: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x [T, K] @ weight [N, K]^T + bias`` -> ``(y, x codes, x scales, x tensor scale, the
    same three for the weight)``; FP4 parts the numerics' backward does not read are empty."""
    layer = _layer(implementation)
    options = {"native": True} if Implementation(implementation) is Implementation.TRITON_NATIVE else {}
    with _no_autocast(x.device):
        y, saved = layer.forward(x, weight, bias, Numerics.decode(numerics), **options)
    return y.contiguous(), *saved.fp4_tensors(x)


_define("linear", _forward)


@torch.library.register_fake("quartet::linear")
def _forward_fake(x, weight, bias, numerics, implementation, rng):
    return x.new_empty(x.shape[0], weight.shape[0]), *Saved.fake_fp4_tensors(
        Numerics.decode(numerics), x, weight.shape[0]
    )


def _backward_op(
    grad: Tensor,
    x: Tensor | None,
    weight: Tensor | None,
    x_codes: Tensor,
    x_scales: Tensor,
    x_tensor_scale: Tensor,
    w_codes: Tensor,
    w_scales: Tensor,
    w_tensor_scale: Tensor,
    numerics: str,
    implementation: str,
    rng: int,
    x_dtype: torch.dtype,
    w_dtype: torch.dtype,
    needs_dx: bool,
    needs_dw: bool,
) -> tuple[Tensor, Tensor]:
    """``(dx [T, K], dW [N, K])`` from ``grad [T, N]`` and what ``quartet::linear`` saved;
    an output that is not needed comes back empty."""
    resolved = Numerics.decode(numerics)
    parts = (x_codes, x_scales, x_tensor_scale, w_codes, w_scales, w_tensor_scale)
    tokens, n = grad.shape
    k = Saved.in_features(resolved, weight, parts)
    if tokens == 0:  # eager's gradients of an empty batch: an empty dx and a zero dW
        dx = grad.new_zeros((0, k) if needs_dx else 0, dtype=x_dtype)
        return dx, grad.new_zeros((n, k) if needs_dw else 0, dtype=w_dtype)
    saved = Saved.decode(resolved, x, weight, parts, tokens, n, (x_dtype, w_dtype))
    options = {"native": True} if Implementation(implementation) is Implementation.TRITON_NATIVE else {}
    with _no_autocast(grad.device):
        dx, dw = _layer(implementation).backward(
            grad,
            saved,
            resolved,
            dtypes=(x_dtype, w_dtype),
            needs=(needs_dx, needs_dw),
            source=stream_generator(rng, grad.device),
            **options,
        )
    empty = grad.new_empty(0)
    return (empty if dx is None else dx.contiguous()), (empty if dw is None else dw.contiguous())


_define("linear_backward", _backward_op)


@torch.library.register_fake("quartet::linear_backward")
def _backward_fake(grad, x, weight, *rest):
    parts, (numerics, _implementation, _rng, x_dtype, w_dtype, needs_dx, needs_dw) = rest[:6], rest[6:]
    tokens, n = grad.shape
    k = Saved.in_features(Numerics.decode(numerics), weight, parts)
    dx = grad.new_empty(tokens, k, dtype=x_dtype) if needs_dx else grad.new_empty(0)
    dw = grad.new_empty(n, k, dtype=w_dtype) if needs_dw else grad.new_empty(0)
    return dx, dw


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, numerics, implementation, rng = inputs
    resolved = Numerics.decode(numerics)
    ctx.save_for_backward(x if resolved.saves_x else None, weight if resolved.saves_weight else None, *output[1:])
    ctx.args = (numerics, implementation, rng, x.dtype, weight.dtype)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.set_materialize_grads(False)  # no zero tensors (and launches) for the FP4 outputs' grads


def _backward(ctx: Any, grad: Tensor | None, *_unused_grads: Tensor | None) -> tuple[Tensor | None, ...]:
    if grad is None:
        return (None,) * 6
    needs_dx, needs_dw, needs_db = ctx.needs_input_grad[:3]
    dx, dw = torch.ops.quartet.linear_backward(grad, *ctx.saved_tensors, *ctx.args, needs_dx, needs_dw)
    db = grad.float().sum(0).to(ctx.bias_dtype) if needs_db and ctx.bias_dtype is not None else None
    return (dx if needs_dx else None), (dw if needs_dw else None), db, None, None, None


torch.library.register_autograd("quartet::linear", _backward, setup_context=_setup_context)


def _autocast(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Cast as autocast casts ``F.linear`` (all floating inputs to the autocast dtype); outside
    autocast, mismatched dtypes are an error, as they are for ``F.linear``."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    if x.dtype != weight.dtype:
        raise RuntimeError(
            f"quartet linear: input is {x.dtype} but weight is {weight.dtype}; use torch.autocast or matching dtypes "
            "(F.linear rejects this too)"
        )
    return x, weight, bias


def _pad_amount(size: int | torch.SymInt, multiple: int) -> int | torch.SymInt:
    return (multiple - size % multiple) % multiple


def _may_pad(amount: int | torch.SymInt) -> bool:
    """A symbolic amount counts as padding: testing it would guard (and recompile) per length."""
    return isinstance(amount, torch.SymInt) or amount != 0


def quantized_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    numerics: str,
    implementation: str = Implementation.REFERENCE.value,
    rng: int = DEFAULT_STREAM,
) -> Tensor:
    """``F.linear`` with quartet numerics: what the graph pass puts in place of a matmul.

    ``x [..., K]``, ``weight [N, K]``; ``numerics``: :meth:`Numerics.encode`; ``implementation``:
    a :class:`~.routing.Implementation`; ``rng``: the backward's random stream. Dimensions the
    numerics cannot take are zero-padded (``T`` at run time, so dynamic sequence lengths need
    no recompilation) and sliced back.
    """
    x, weight, bias = _autocast(x, weight, bias)
    multiples = Numerics.decode(numerics).multiples
    *lead, k = x.shape
    n = weight.shape[0]
    x2 = x.reshape(-1, k)
    tokens = x2.shape[0]
    pad_t, pad_k, pad_n = (_pad_amount(s, multiples[d]) for s, d in ((tokens, "T"), (k, "K"), (n, "N")))
    if pad_k or _may_pad(pad_t):
        x2 = F.pad(x2, (0, pad_k, 0, pad_t))
    if pad_k or pad_n:
        weight = F.pad(weight, (0, pad_k, 0, pad_n))
    if bias is not None and pad_n:
        bias = F.pad(bias, (0, pad_n))
    y = torch.ops.quartet.linear(x2, weight, bias, numerics, implementation, rng)[0]
    if _may_pad(pad_t) or pad_n:
        y = y[:tokens, :n]
    return y.reshape(*lead, n)
