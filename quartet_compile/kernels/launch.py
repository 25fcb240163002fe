"""Kernel launches: from compiled graphs through ``torch.library.wrap_triton`` (:func:`run`),
otherwise through a cache that skips most of ``JITFunction.__getitem__``'s per-call host work
(:func:`launch`).

Every launch through ``kernel[grid](...)`` re-derives the kernel's specialization from every
argument, hashes it and checks the kernel's globals, which a quantized layer pays for each of its
launches. :func:`launch` does that work once per *call signature* (kernel, device, argument
dtypes, 16-byte alignment of every pointer, exact integer values and options), keeps the compiled
kernel Triton returned for it, and later hands the arguments straight to that kernel's launcher.
The signature is at least as fine as Triton's specialization (which depends on dtypes, 16-byte
pointer divisibility and integer values), so a cached kernel is the one ``kernel[grid]`` would
pick. Interpreted kernels (``TRITON_INTERPRET=1``) and registered launch hooks (profilers) take
the ordinary path.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor
from triton import knobs
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from .mutation_analysis import reuse_ttir_of_our_kernels

_POINTER_ALIGNMENT = 16
"""Triton specializes pointer arguments on divisibility by 16 bytes."""

_compiled: dict[tuple, tuple] = {}
"""``(id(kernel), device, signature, options)`` -> (the kernel, its compiled launcher, function
handle and packed metadata, the trailing arguments). Keyed by ``id`` because hashing a
``JITFunction`` runs Python; the stored kernel guards against a reused ``id``. One small entry
per kernel and distinct shape, alignment and options: about 16 per distinct layer shape."""


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for grid sizes: ``triton.cdiv`` is a constexpr function, whose call from
    Python costs several microseconds."""
    return -(a // -b)


def _other_signature(arg: Any) -> Any:
    if isinstance(arg, float):
        return float  # every Python float is passed as fp32, never specialized on its value
    return arg.__class__, arg


def _signature(args: tuple) -> tuple:
    """What of each argument can select a different compiled kernel (never a reference to a
    tensor): dtype and alignment of tensors, the type and value of other arguments except floats.
    One comprehension with the common cases inline, as this runs on every launch."""
    return tuple(
        [
            (arg.dtype, arg.data_ptr() % _POINTER_ALIGNMENT)
            if isinstance(arg, torch.Tensor)
            else arg
            if arg is None
            else (int, arg)
            if arg.__class__ is int
            else _other_signature(arg)
            for arg in args
        ]
    )


def _trailing_arguments(kernel: JITFunction, positional: int, options: dict[str, Any]) -> tuple:
    """The kernel's parameters after the positional ones, in order: keyword values or defaults
    (the compiled launcher takes every parameter, constexprs included, and skips constexprs)."""
    values = []
    for param in kernel.params[positional:]:
        if param.name in options:
            values.append(options[param.name])
        elif param.default is not inspect.Parameter.empty:
            values.append(param.default)
        else:
            raise TypeError(f"{kernel.__name__}: missing argument {param.name!r}")
    return tuple(values)


def _hooked() -> bool:
    """Whether a launch hook is registered (Triton keeps them in possibly empty chains)."""
    enter, leave = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return (enter is not None and bool(getattr(enter, "calls", True))) or (
        leave is not None and bool(getattr(leave, "calls", True))
    )


def launch(kernel: JITFunction, grid: tuple[int, ...], *args: Any, **options: Any) -> None:
    """``kernel[grid](*args, **options)``; ``options`` holds the constexpr parameters and
    compile options (``num_warps``, ...), the same for every call of one call site."""
    if not isinstance(kernel, JITFunction) or _hooked():
        kernel[grid](*args, **options)
        return
    device = torch.cuda.current_device()
    key = (id(kernel), device, _signature(args), tuple(options.items()))
    entry = _compiled.get(key)
    if entry is None or entry[0] is not kernel:
        compiled = kernel[grid](*args, **options)
        trailing = _trailing_arguments(kernel, len(args), options)
        _compiled[key] = (kernel, compiled.run, compiled.function, compiled.packed_metadata, trailing)
        return
    _, run, function, metadata, trailing = entry
    grid_x, grid_y, grid_z = (*grid, 1, 1)[:3]
    run(
        grid_x,
        grid_y,
        grid_z,
        driver.active.get_current_stream(device),
        function,
        metadata,
        None,
        None,
        None,
        *args,
        *trailing,
    )


_DROPPED_WHEN_TRACED = ("enable_fp_fusion", "maxnreg")
"""Launch options that Inductor's launches of user kernels do not pass on: the kernels enforce
the reference's rounding themselves (``nvfp4_math.mul_rn``), and a register cap only tunes speed."""


def traced(args: tuple) -> bool:
    """Whether a graph is being traced: tensors are fake or functional stand-ins (Python
    subclasses, or the wrappers of ``torch.func.functionalize``)."""
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return any(
        isinstance(arg, (FakeTensor, FunctionalTensor))
        or (isinstance(arg, torch.Tensor) and torch._is_functional_tensor(arg))
        for arg in args
    )


def realized(t: Tensor) -> Tensor:
    """``t``, for several launches to read. In a compiled graph Inductor hands each launch of a
    user kernel its own copy of an input that is still an unfused computation (a dtype cast, a
    pointwise gradient): a gradient read by the four MS-EDEN passes was written four times.
    Fixing its layout here realizes it once, in its producer's kernel. Eager: ``t`` itself."""
    if not traced((t,)):
        return t
    from torch._inductor import inductor_prims

    return inductor_prims.force_stride_order(t, t.stride())


def run(kernel: JITFunction, grid: tuple, *args: Any, **options: Any) -> None:
    """Launch ``kernel``: recorded through ``torch.library.wrap_triton`` while a graph is traced,
    so that the compiled graph launches it from generated code, with no Python of ours at run
    time; otherwise through :func:`launch`."""
    if traced(args):
        from torch.library import wrap_triton

        reuse_ttir_of_our_kernels()
        kept = {k: v for k, v in options.items() if k not in _DROPPED_WHEN_TRACED}
        wrap_triton(kernel)[grid](*args, **kept)
        return
    launch(kernel, grid, *args, **options)
