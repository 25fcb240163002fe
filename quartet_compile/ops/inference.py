"""The inference path of the quantized linear: each weight quantized once per parameter version.

Where autograd will not run a backward (``torch.no_grad``, ``torch.inference_mode``, or nothing
requiring grad) and the backend's ``cache_inference_weights`` is on,
:func:`~.linear.quantized_linear` calls ``quartet::linear_inference``: the
forward's numbers bit for bit, with the weight's quantized operand taken from a cache instead of
recomputed, and nothing kept for a backward. Evaluation and generation inside a training loop
then cost one quantizer launch per layer (the input's) instead of two.

The cache holds one entry per weight tensor, keyed by the tensor itself (a weak reference: the
entry goes with the tensor) and checked against its version counter, which every in-place
update bumps (optimizer steps, ``load_state_dict``, ``copy_``): a weight that changed is
quantized again. The check is Python, so the op is opaque: its Python, and that of the kernels
it launches, runs at every call (about 170 us per layer on an H100 host, against Inductor's
generated launches of the uncached path), and it is tagged ``cudagraph_unsafe``: a CUDA-graph
replay would skip the check and read a stale weight, so Inductor runs such graphs without CUDA
graphs. The entry costs the FP4 weight in memory, and on GPUs without FP4 tensor cores also the
unscaled bf16 operand their GEMM reads (two bytes per weight).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..nvfp4.numerics import Numerics
from .linear import implementation_layer, implementation_options, no_autocast


class CacheInfo(NamedTuple):
    """Counts since the last :func:`clear_weight_cache`, as ``functools.lru_cache`` reports them."""

    hits: int
    misses: int
    weights: int


@dataclass
class _Entry:
    weight: weakref.ref
    version: int
    operands: dict[tuple, Any] = field(default_factory=dict)


_entries: dict[int, _Entry] = {}
_counts = {"hits": 0, "misses": 0}


def weight_cache_info() -> CacheInfo:
    """Hits and misses of the inference path's weight cache, and how many weights it holds."""
    return CacheInfo(_counts["hits"], _counts["misses"], len(_entries))


def clear_weight_cache() -> None:
    """Drop every cached quantized weight (the memory they hold) and reset the counts."""
    _entries.clear()
    _counts.update(hits=0, misses=0)


def _cached_operand(weight: Tensor, key: tuple, make: Any) -> Any:
    """``make()`` for ``weight`` in its current version and ``key``, computed once."""
    if weight.is_inference():  # no version counter: nothing tells a changed tensor apart
        _counts["misses"] += 1
        return make()
    wid = id(weight)
    entry = _entries.get(wid)
    if entry is None or entry.weight() is not weight or entry.version != weight._version:
        entry = _Entry(weakref.ref(weight, lambda _ref: _entries.pop(wid, None)), weight._version)
        _entries[wid] = entry
    if key in entry.operands:
        _counts["hits"] += 1
        return entry.operands[key]
    _counts["misses"] += 1
    entry.operands[key] = operand = make()
    return operand


def linear_inference_op(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    numerics: str,
    implementation: str,
    weight_dtype: torch.dtype | None,
    pad_k: int,
    pad_n: int,
) -> Tensor:
    """``quartet::linear_inference``: ``x [T, K + pad_k] @ W^T + bias`` where ``W`` is ``weight``
    cast to ``weight_dtype`` (autocast's; ``None``: as it is) and zero-padded by ``pad_k``,
    ``pad_n``, its quantized operand cached per parameter version."""
    resolved = Numerics.decode(numerics)
    layer = implementation_layer(implementation)
    options = implementation_options(implementation)

    def padded() -> Tensor:
        w = weight.detach() if weight_dtype is None else weight.detach().to(weight_dtype)
        return F.pad(w, (0, pad_k, 0, pad_n)) if pad_k or pad_n else w

    def make() -> Any:
        with no_autocast(x.device):
            return layer.weight_operand(padded(), resolved, **options)

    operand = _cached_operand(weight, (numerics, implementation, weight_dtype, pad_k, pad_n), make)
    with no_autocast(x.device):
        y, _ = layer.forward(x, None, bias, resolved, operand=operand, **options)
    return y.contiguous()


_LIBRARY = torch.library.Library("quartet", "FRAGMENT")
_LIBRARY.define(
    "linear_inference" + torch.library.infer_schema(linear_inference_op, mutates_args=()),
    tags=(torch.Tag.cudagraph_unsafe,),
)
_LIBRARY.impl("linear_inference", linear_inference_op, "CompositeExplicitAutograd")


@torch.library.register_fake("quartet::linear_inference")
def _linear_inference_fake(x, weight, bias, numerics, implementation, weight_dtype, pad_k, pad_n):
    return x.new_empty(x.shape[0], weight.shape[0] + pad_n)
