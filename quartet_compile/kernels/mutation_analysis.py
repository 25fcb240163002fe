"""PyTorch's analysis of which arguments a traced Triton launch writes, made affordable for
this package's kernels.

To functionalize a ``wrap_triton`` launch, and again while Inductor lowers it, PyTorch builds the
kernel's Triton IR (``generate_ttir``) and walks its stores: tens of milliseconds, repeated about
five times per launch. A model's quantized layers make hundreds of launches, which adds minutes
to a compile (pytorch/pytorch#193227 proposes to do the analysis once per launch). The IR of one
of our kernels for one argument signature never changes, so :func:`reuse_ttir_of_our_kernels`
builds it, and the Python form of it that the analysis walks, once per signature; every other
kernel is analysed as before.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any

import torch
from triton.runtime import driver
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

_ttir: dict[tuple, Any] = {}
"""Triton IR of our kernels per argument signature."""

_functions: dict[int, Any] = {}
"""The operations of each IR module in :data:`_ttir`, by ``id`` (``None`` until first asked for).
The modules stay alive in :data:`_ttir`, so an ``id`` here is always one of ours."""

_pytorch: dict[str, Callable[..., Any]] = {}
"""PyTorch's own functions, once :func:`reuse_ttir_of_our_kernels` has replaced them."""


def _ttir_key(kernel: Any, kwargs: dict[str, Any], rest: tuple) -> tuple | None:
    """What the Triton IR that ``generate_ttir`` builds depends on, for kernels of this package:
    the kernel and its compile-time arguments (``wrap_triton`` hands it over as a one-config
    ``Autotuner``), each tensor's dtype (PyTorch builds the IR from stand-in tensors of that
    dtype), every other argument's value (some PyTorch releases fold every non-tensor argument
    into the IR as a constant, which can remove a store; symbolic sizes are replaced by a
    constant) and the target. ``None`` (build it afresh) for anything else."""
    configured = ()
    if isinstance(kernel, Autotuner):
        configured = tuple(kernel.configs[0].all_kwargs().items()) if kernel.configs else ()
        kernel = kernel.fn
    module = getattr(getattr(kernel, "fn", None), "__module__", "")
    if not isinstance(kernel, JITFunction) or not module.startswith(__package__ + ".") or rest != ({},):
        return None
    key: list[Any] = [kernel, configured, driver.active.get_current_target()]
    for name, arg in kwargs.items():
        if isinstance(arg, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            key.append((name, "symbolic"))
        elif arg is None or isinstance(arg, (bool, int, float, str)):
            key.append((name, arg.__class__, arg))
        elif isinstance(getattr(arg, "dtype", None), torch.dtype):
            key.append((name, "tensor", arg.dtype))
        else:
            return None
    return tuple(key)


def reuse_ttir_of_our_kernels() -> None:
    """Put :func:`_generate_ttir` and :func:`_ttir_to_functions` in place of PyTorch's own
    (once per process)."""
    from torch._higher_order_ops import triton_kernel_wrap

    if "generate_ttir" in _pytorch:
        return
    for name, ours in (("generate_ttir", _generate_ttir), ("ttir_to_functions", _ttir_to_functions)):
        _pytorch[name] = getattr(triton_kernel_wrap, name)
        setattr(triton_kernel_wrap, name, ours)
    atexit.register(_ttir.clear)  # free the IR before Triton's bindings are torn down
    atexit.register(_functions.clear)


def _generate_ttir(kernel: Any, kwargs: dict[str, Any], *rest: Any) -> Any:
    """PyTorch's ``generate_ttir``, built once per :func:`_ttir_key` for our kernels."""
    key = _ttir_key(kernel, kwargs, rest)
    if key is None:
        return _pytorch["generate_ttir"](kernel, kwargs, *rest)
    if key not in _ttir:
        _ttir[key] = _pytorch["generate_ttir"](kernel, kwargs, *rest)
        _functions[id(_ttir[key][0])] = None
    return _ttir[key]


def _ttir_to_functions(module: Any) -> Any:
    """PyTorch's ``ttir_to_functions`` (the IR's operations as Python data, which the analysis
    walks), once per module of ours."""
    if id(module) not in _functions:
        return _pytorch["ttir_to_functions"](module)
    if _functions[id(module)] is None:
        _functions[id(module)] = _pytorch["ttir_to_functions"](module)
    return _functions[id(module)]
