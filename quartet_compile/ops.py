"""The ``quartet`` custom ops: a quantized linear layer whose forward and backward are
single operators, so AOTAutograd traces both graphs with our ops and nothing opaque.

``quartet::linear`` returns the output and the FP4 tensors the backward needs (empty where a
recipe keeps nothing); ``quartet::linear_backward`` computes ``(dx, dW)``. Their default
implementation runs the Triton kernels (``quartet_compile.kernels``) on CUDA for the recipe parts
they cover and the pure-PyTorch reference everywhere else. :func:`quartet_linear_op` is what compiled graphs call:
it applies autocast the way ``F.linear`` would and zero-pads shapes the recipe cannot take
(padding leaves every product unchanged), so the ops only ever see aligned shapes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import BackwardQuant, ForwardQuant, QuartetConfig, Recipe
from .reference import linear as reference
from .reference.linear import Saved, required_multiples
from .reference.nvfp4 import NVFP4Tensor

DEFAULT_RNG = -1
"""``rng`` argument meaning PyTorch's default generator of the tensor's device; other values are
streams of :func:`random_stream`."""

_NO_FOUR_OVER_SIX_OVERRIDE = -1


@functools.cache
def _config(recipe: str, four_over_six: int) -> QuartetConfig:
    override = None if four_over_six == _NO_FOUR_OVER_SIX_OVERRIDE else bool(four_over_six)
    return QuartetConfig(recipe=Recipe(recipe), four_over_six=override)


_stream_seeds: list[int] = []
"""Seed of each random stream, indexed by the stream's ``rng`` number."""
_stream_generators: dict[tuple[int, torch.device], torch.Generator] = {}


def random_stream(seed: int) -> int:
    """A new stream of backward randomness seeded with ``seed``: the ``rng`` argument that selects
    it. Each backend with ``seed=`` opens one, so two ``torch.compile`` calls with the same seed
    replay the same draws, while the graphs of one call continue a single stream."""
    _stream_seeds.append(seed)
    return len(_stream_seeds) - 1


def _random_source(rng: int, device: torch.device) -> torch.Generator | None:
    """The generator of stream ``rng`` on ``device``, created on first use and advanced by every
    backward call; ``None`` (the default generator) for :data:`DEFAULT_RNG`."""
    if rng == DEFAULT_RNG:
        return None
    key = (rng, torch.device(device))
    if key not in _stream_generators:
        _stream_generators[key] = torch.Generator(device=device).manual_seed(_stream_seeds[rng])
    return _stream_generators[key]


def _kernels_for(config: QuartetConfig, device: torch.device) -> tuple[bool, bool]:
    """(forward, backward): whether the Triton kernels run ``config`` on ``device``."""
    if device.type != "cuda" or importlib.util.find_spec("triton") is None:
        return False, False
    from .kernels.linear import supports

    return supports(config)


def _linear_forward(x: Tensor, weight: Tensor, bias: Tensor | None, config: QuartetConfig) -> tuple[Tensor, Saved]:
    if _kernels_for(config, x.device)[0]:
        from .kernels.linear import linear_forward

        reference.check_shapes(config, x.shape[0], x.shape[1], weight.shape[0])
        return linear_forward(x, weight, bias, config)
    return reference.linear_forward(x, weight, bias, config)


def _linear_backward(grad: Tensor, saved: Saved, config: QuartetConfig, **kwargs: Any) -> tuple[Tensor | None, ...]:
    if _kernels_for(config, grad.device)[1]:
        from .kernels.linear import linear_backward

        return linear_backward(grad, saved, config, **kwargs)
    return reference.linear_backward(grad, saved, config, **kwargs)


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The reference picks its own precisions; an enclosing autocast must not recast them.
    (Checked first: entering ``torch.autocast`` costs host time on every call.)"""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def _saves_hp_x(config: QuartetConfig) -> bool:
    return config.forward_quant is ForwardQuant.NONE or config.backward_quant is BackwardQuant.NVIDIA


def _saves_fp4(config: QuartetConfig) -> tuple[bool, bool]:
    """Whether the forward saves the FP4 forms of ``(x, weight)`` for the backward."""
    quantized = config.forward_quant is not ForwardQuant.NONE
    return quantized and not _saves_hp_x(config), quantized


def _fp4_parts(q: NVFP4Tensor | None, like: Tensor) -> list[Tensor]:
    """The three tensors of ``q`` (contiguous, as the fake implementation declares them), or
    three empty ones where nothing is saved."""
    if q is None:
        return [
            like.new_empty(0, dtype=torch.uint8),
            like.new_empty(0, dtype=torch.float8_e4m3fn),
            like.new_empty(0, dtype=torch.float32),
        ]
    return [q.codes.contiguous(), q.scales.contiguous(), q.tensor_scale]


_LIBRARY = torch.library.Library("quartet", "DEF")
"""The ops are defined with ``torch.library.Library`` rather than ``torch.library.custom_op``,
whose wrapper adds Python layers (an aliasing check, a Dynamo guard) to every call: host time
that a training step pays twice per linear layer (``bench/results/host-overhead.md``). Our
implementations always return fresh tensors, which is what the aliasing check verifies."""


def _define(fn: Any) -> None:
    """Define ``quartet::<fn name>`` with the schema of ``fn``'s type hints, implemented by ``fn``
    for every device (it dispatches to the kernels or the reference itself)."""
    name = fn.__name__.removesuffix("_op")
    _LIBRARY.define(name + torch.library.infer_schema(fn, mutates_args=()))
    _LIBRARY.impl(name, fn, "CompositeExplicitAutograd")


def linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, recipe: str, four_over_six: int, rng: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``x [T, K] @ weight [N, K]^T + bias`` -> ``(y, x codes, x scales, x tensor scale, the
    same three for the weight)``; FP4 parts the recipe's backward does not read are empty."""
    config = _config(recipe, four_over_six)
    with _no_autocast(x.device):
        y, saved = _linear_forward(x, weight, bias, config)
    return y.contiguous(), *_fp4_parts(saved.xq, x), *_fp4_parts(saved.wq, x)


_define(linear)


@torch.library.register_fake("quartet::linear")
def _linear_fake(x, weight, bias, recipe, four_over_six, rng):
    config = _config(recipe, four_over_six)
    tokens, k = x.shape
    n = weight.shape[0]
    saves_xq, saves_wq = _saves_fp4(config)

    def parts(rows: int, present: bool) -> list[Tensor]:
        if not present:
            return _fp4_parts(None, x)
        return [
            x.new_empty(rows, k // 2, dtype=torch.uint8),
            x.new_empty(rows, k // 16, dtype=torch.float8_e4m3fn),
            x.new_empty((), dtype=torch.float32),
        ]

    y = x.new_empty(tokens, n)
    return y, *parts(tokens, saves_xq), *parts(n, saves_wq)


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
    recipe: str,
    four_over_six: int,
    rng: int,
    x_dtype: torch.dtype,
    w_dtype: torch.dtype,
    needs_dx: bool,
    needs_dw: bool,
) -> tuple[Tensor, Tensor]:
    """``(dx [T, K], dW [N, K])`` from ``grad [T, N]`` and what ``quartet::linear`` saved;
    an output that is not needed comes back empty."""
    config = _config(recipe, four_over_six)
    tokens, n = grad.shape
    saves_xq, saves_wq = _saves_fp4(config)
    k = 2 * w_codes.shape[1] if saves_wq else weight.shape[1]
    if tokens == 0:  # eager's gradients of an empty batch: an empty dx and a zero dW
        return grad.new_zeros((0, k) if needs_dx else 0, dtype=x_dtype), grad.new_zeros(
            (n, k) if needs_dw else 0, dtype=w_dtype
        )

    def rebuild(codes, scales, tensor_scale, rows, dtype):
        return NVFP4Tensor(codes, scales, tensor_scale, torch.Size((rows, k)), dtype)

    saved = Saved(
        x=x,
        weight=weight,
        xq=rebuild(x_codes, x_scales, x_tensor_scale, tokens, x_dtype) if saves_xq else None,
        wq=rebuild(w_codes, w_scales, w_tensor_scale, n, w_dtype) if saves_wq else None,
    )
    with _no_autocast(grad.device):
        dx, dw = _linear_backward(
            grad,
            saved,
            config,
            dtypes=(x_dtype, w_dtype),
            needs=(needs_dx, needs_dw),
            source=_random_source(rng, grad.device),
        )
    empty = grad.new_empty(0)
    return (empty if dx is None else dx.contiguous()), (empty if dw is None else dw.contiguous())


_define(linear_backward_op)


@torch.library.register_fake("quartet::linear_backward")
def _linear_backward_fake(
    grad,
    x,
    weight,
    x_codes,
    x_scales,
    x_tensor_scale,
    w_codes,
    w_scales,
    w_tensor_scale,
    recipe,
    four_over_six,
    rng,
    x_dtype,
    w_dtype,
    needs_dx,
    needs_dw,
):
    tokens, n = grad.shape
    k = 2 * w_codes.shape[1] if _saves_fp4(_config(recipe, four_over_six))[1] else weight.shape[1]
    dx = grad.new_empty(tokens, k, dtype=x_dtype) if needs_dx else grad.new_empty(0)
    dw = grad.new_empty(n, k, dtype=w_dtype) if needs_dw else grad.new_empty(0)
    return dx, dw


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    x, weight, bias, recipe, four_over_six, rng = inputs
    config = _config(recipe, four_over_six)
    keep_x = _saves_hp_x(config)
    keep_w = config.forward_quant is ForwardQuant.NONE
    ctx.save_for_backward(x if keep_x else None, weight if keep_w else None, *output[1:])
    ctx.args = (recipe, four_over_six, rng, x.dtype, weight.dtype)
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


def op_arguments(config: QuartetConfig, rng: int = DEFAULT_RNG) -> dict[str, Any]:
    """The keyword arguments of :func:`quartet_linear_op` that select ``config``'s numerics and
    the random stream ``rng`` (:func:`random_stream`) of its backward."""
    return {
        "recipe": config.recipe.value,
        "four_over_six": _NO_FOUR_OVER_SIX_OVERRIDE if config.four_over_six is None else int(config.four_over_six),
        "rng": rng,
    }


def _pad_amount(size: int | torch.SymInt, multiple: int) -> int | torch.SymInt:
    return (multiple - size % multiple) % multiple


def _may_pad(amount: int | torch.SymInt) -> bool:
    """A symbolic amount counts as padding: testing it would guard (and recompile) per length."""
    return isinstance(amount, torch.SymInt) or amount != 0


def quartet_linear_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    recipe: str = Recipe.QUARTET2.value,
    four_over_six: int = _NO_FOUR_OVER_SIX_OVERRIDE,
    rng: int = DEFAULT_RNG,
) -> Tensor:
    """``F.linear`` with quartet numerics: what the graph pass puts in place of a matmul.

    ``x [..., K]``, ``weight [N, K]``. Dimensions the recipe cannot take are zero-padded
    (``T`` at run time, so dynamic sequence lengths need no recompilation) and sliced back.
    """
    x, weight, bias = _autocast(x, weight, bias)
    multiples = required_multiples(_config(recipe, four_over_six))
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
    y = torch.ops.quartet.linear(x2, weight, bias, recipe, four_over_six, rng)[0]
    if _may_pad(pad_t) or pad_n:
        y = y[:tokens, :n]
    return y.reshape(*lead, n)
