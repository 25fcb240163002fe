"""The ``quartet`` custom ops: a quantized linear layer whose forward and backward are single
operators, with fake and autograd registrations.

Two pairs, one body: ``quartet::linear`` / ``quartet::linear_backward`` run any implementation
(:mod:`.routing` decided it) with any random stream, as opaque operators whose Python runs at
every call; ``quartet::linear_triton`` / ``quartet::linear_triton_backward`` run the Triton
kernels with PyTorch's default generator as ``triton_op`` operators, which a compiled graph
decomposes into kernel launches that Inductor makes from generated code. The forward returns the
output and the FP4 tensors the backward needs (the layout of :class:`~quartet_compile.nvfp4.Saved`).

:func:`quantized_linear` is what compiled graphs and the eager API call: it applies autocast the
way ``F.linear`` would, zero-pads shapes the numerics cannot take (padding leaves every product
unchanged), so the ops only ever see aligned shapes, and picks the pair.
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


def implementation_layer(implementation: str) -> Any:
    """The module implementing the forward/backward protocol for ``implementation``."""
    if Implementation(implementation) is Implementation.REFERENCE:
        return reference
    from ..kernels import layer as kernels

    return kernels


def implementation_options(implementation: str) -> dict[str, bool]:
    """Keyword arguments of the layer's ``forward``/``backward`` for ``implementation``."""
    return {"native": True} if Implementation(implementation) is Implementation.TRITON_NATIVE else {}


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The implementations pick their own precisions; an enclosing autocast must not recast
    them. (Checked first: entering ``torch.autocast`` costs host time on every call.)"""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, numerics: str, implementation: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x [T, K] @ weight [N, K]^T + bias`` -> ``(y, x codes, x scales, x tensor scale, the
    same three for the weight)``; FP4 parts the numerics' backward does not read are empty."""
    options = implementation_options(implementation)
    with no_autocast(x.device):
        y, saved = implementation_layer(implementation).forward(x, weight, bias, Numerics.decode(numerics), **options)
    return y.contiguous(), *saved.fp4_tensors(x)


def _backward(
    grad: Tensor,
    x: Tensor | None,
    weight: Tensor | None,
    parts: tuple[Tensor, ...],
    numerics: str,
    implementation: str,
    rng: int,
    dtypes: tuple[torch.dtype, torch.dtype],
    needs: tuple[bool, bool],
) -> tuple[Tensor, Tensor]:
    """``(dx [T, K], dW [N, K])`` from ``grad [T, N]`` and what the forward saved; an output
    that is not needed comes back empty."""
    resolved = Numerics.decode(numerics)
    tokens, n = grad.shape
    k = Saved.in_features(resolved, weight, parts)
    if tokens == 0:  # eager's gradients of an empty batch: an empty dx and a zero dW
        dx = grad.new_zeros((0, k) if needs[0] else 0, dtype=dtypes[0])
        return dx, grad.new_zeros((n, k) if needs[1] else 0, dtype=dtypes[1])
    saved = Saved.decode(resolved, x, weight, parts, tokens, n, dtypes)
    options = implementation_options(implementation)
    with no_autocast(grad.device):
        dx, dw = implementation_layer(implementation).backward(
            grad, saved, resolved, dtypes=dtypes, needs=needs, source=stream_generator(rng, grad.device), **options
        )
    empty = grad.new_empty(0)
    return (empty if dx is None else dx.contiguous()), (empty if dw is None else dw.contiguous())


def _backward_fake(grad: Tensor, weight: Tensor | None, parts: tuple, numerics: str, dtypes: tuple, needs: tuple):
    tokens, n = grad.shape
    k = Saved.in_features(Numerics.decode(numerics), weight, parts)
    dx = grad.new_empty(tokens, k, dtype=dtypes[0]) if needs[0] else grad.new_empty(0)
    dw = grad.new_empty(n, k, dtype=dtypes[1]) if needs[1] else grad.new_empty(0)
    return dx, dw


def _setup_context(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, numerics: str, output: tuple) -> None:
    resolved = Numerics.decode(numerics)
    ctx.save_for_backward(x if resolved.saves_x else None, weight if resolved.saves_weight else None, *output[1:])
    ctx.dtypes = (x.dtype, weight.dtype)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.set_materialize_grads(False)  # no zero tensors (and launches) for the FP4 outputs' grads


def _autograd(backward_op: Any, inputs: int) -> Any:
    """The autograd formula of a forward op with ``inputs`` arguments, whose backward is
    ``backward_op(grad, x, weight, *parts, *ctx.args, x_dtype, w_dtype, needs_dx, needs_dw)``."""

    def backward(ctx: Any, grad: Tensor | None, *_unused_grads: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad is None:
            return (None,) * inputs
        needs_dx, needs_dw, needs_db = ctx.needs_input_grad[:3]
        dx, dw = backward_op(grad, *ctx.saved_tensors, *ctx.args, *ctx.dtypes, needs_dx, needs_dw)
        db = grad.float().sum(0).to(ctx.bias_dtype) if needs_db and ctx.bias_dtype is not None else None
        return (dx if needs_dx else None), (dw if needs_dw else None), db, *([None] * (inputs - 3))

    return backward


# The ops of every implementation: torch.library.Library definitions (not custom_op, whose wrapper
# adds an aliasing check and a Dynamo guard to every call; ours always return fresh tensors).

_LIBRARY = torch.library.Library("quartet", "DEF")


def linear_op(
    x: Tensor, weight: Tensor, bias: Tensor | None, numerics: str, implementation: str, rng: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``quartet::linear``: the forward of ``implementation`` (its backward draws from ``rng``)."""
    return _forward(x, weight, bias, numerics, implementation)


def linear_backward_op(
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
    """``quartet::linear_backward``: ``(dx, dW)`` of ``quartet::linear``."""
    parts = (x_codes, x_scales, x_tensor_scale, w_codes, w_scales, w_tensor_scale)
    return _backward(grad, x, weight, parts, numerics, implementation, rng, (x_dtype, w_dtype), (needs_dx, needs_dw))


for _name, _fn in (("linear", linear_op), ("linear_backward", linear_backward_op)):
    _LIBRARY.define(_name + torch.library.infer_schema(_fn, mutates_args=()))
    _LIBRARY.impl(_name, _fn, "CompositeExplicitAutograd")


@torch.library.register_fake("quartet::linear")
def _linear_fake(x, weight, bias, numerics, implementation, rng):
    return x.new_empty(x.shape[0], weight.shape[0]), *Saved.fake_fp4_tensors(
        Numerics.decode(numerics), x, weight.shape[0]
    )


@torch.library.register_fake("quartet::linear_backward")
def _linear_backward_fake(grad, x, weight, *rest):
    parts, (numerics, _implementation, _rng, x_dtype, w_dtype, needs_dx, needs_dw) = rest[:6], rest[6:]
    return _backward_fake(grad, weight, parts, numerics, (x_dtype, w_dtype), (needs_dx, needs_dw))


def _linear_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, numerics, implementation, rng = inputs
    _setup_context(ctx, x, weight, bias, numerics, output)
    ctx.args = (numerics, implementation, rng)


torch.library.register_autograd(
    "quartet::linear", _autograd(torch.ops.quartet.linear_backward, 6), setup_context=_linear_setup
)


# The Triton implementations with PyTorch's default generator, as operators whose body a compiled
# graph sees: AOTAutograd decomposes them into their kernel launches (``torch.library.wrap_triton``
# in ``kernels.launch.run``), which Inductor launches from generated code, and the seeds drawn
# with ``torch.randint_like`` become part of the graph. Their fake implementation is their body.


def _kernels(native: bool) -> str:
    return (Implementation.TRITON_NATIVE if native else Implementation.TRITON).value


@torch.library.triton_op("quartet::linear_triton", mutates_args=())
def linear_triton_op(
    x: Tensor, weight: Tensor, bias: Tensor | None, numerics: str, native: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``quartet::linear_triton``: the forward on the Triton kernels."""
    return _forward(x, weight, bias, numerics, _kernels(native))


@torch.library.triton_op("quartet::linear_triton_backward", mutates_args=())
def linear_triton_backward_op(
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
    native: bool,
    x_dtype: torch.dtype,
    w_dtype: torch.dtype,
    needs_dx: bool,
    needs_dw: bool,
) -> tuple[Tensor, Tensor]:
    """``quartet::linear_triton_backward``: ``(dx, dW)`` of ``quartet::linear_triton``."""
    parts = (x_codes, x_scales, x_tensor_scale, w_codes, w_scales, w_tensor_scale)
    return _backward(
        grad, x, weight, parts, numerics, _kernels(native), DEFAULT_STREAM, (x_dtype, w_dtype), (needs_dx, needs_dw)
    )


def _linear_triton_setup(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, numerics, native = inputs
    _setup_context(ctx, x, weight, bias, numerics, output)
    ctx.args = (numerics, native)


linear_triton_op.register_autograd(
    _autograd(torch.ops.quartet.linear_triton_backward, 5), setup_context=_linear_triton_setup
)


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


def _no_backward(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether autograd will run no backward of this call (decided while a graph is traced:
    Dynamo guards on grad mode, and requires_grad is part of its inputs' guards)."""
    if not torch.is_grad_enabled():
        return True
    return not any(t is not None and t.requires_grad for t in (x, weight, bias))


def quantized_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    numerics: str,
    implementation: str = Implementation.REFERENCE.value,
    rng: int = DEFAULT_STREAM,
    cache_weights: bool = False,
) -> Tensor:
    """``F.linear`` with quartet numerics: what the graph pass puts in place of a matmul.

    ``x [..., K]``, ``weight [N, K]``; ``numerics``: :meth:`Numerics.encode`; ``implementation``:
    a :class:`~.routing.Implementation`; ``rng``: the backward's random stream. Dimensions the
    numerics cannot take are zero-padded (``T`` at run time, so dynamic sequence lengths need
    no recompilation) and sliced back. ``cache_weights``: where no backward will run, take the
    weight's quantized operand from the inference path's cache (:mod:`.inference`).
    """
    parameter, resolved = weight, Numerics.decode(numerics)
    inference = cache_weights and resolved.quantized and _no_backward(x, weight, bias)
    x, weight, bias = _autocast(x, weight, bias)
    multiples = resolved.multiples
    *lead, k = x.shape
    n = weight.shape[0]
    x2 = x.reshape(-1, k)
    tokens = x2.shape[0]
    pad_t, pad_k, pad_n = (_pad_amount(s, multiples[d]) for s, d in ((tokens, "T"), (k, "K"), (n, "N")))
    if pad_k or _may_pad(pad_t):
        x2 = F.pad(x2, (0, pad_k, 0, pad_t))
    if bias is not None and pad_n:
        bias = F.pad(bias, (0, pad_n))
    if not inference and (pad_k or pad_n):  # the inference path pads (and casts) on a cache miss only
        weight = F.pad(weight, (0, pad_k, 0, pad_n))
    if inference:
        weight_dtype = None if weight.dtype == parameter.dtype else weight.dtype
        y = torch.ops.quartet.linear_inference(
            x2, parameter, bias, numerics, implementation, weight_dtype, pad_k, pad_n
        )
    elif Implementation(implementation) is not Implementation.REFERENCE and rng == DEFAULT_STREAM:
        native = Implementation(implementation) is Implementation.TRITON_NATIVE
        y = torch.ops.quartet.linear_triton(x2, weight, bias, numerics, native)[0]
    else:
        y = torch.ops.quartet.linear(x2, weight, bias, numerics, implementation, rng)[0]
    if _may_pad(pad_t) or pad_n:
        y = y[:tokens, :n]
    return y.reshape(*lead, n)
