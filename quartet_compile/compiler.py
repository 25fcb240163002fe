"""The ``quartet`` torch.compile backend: rewrite linear matmuls, then compile with Inductor.

``torch.compile(model, backend="quartet")`` finds :func:`quartet` through the
``torch_dynamo_backends`` entry point; ``options={...}`` takes the fields of
:class:`~quartet_compile.config.QuartetConfig`. :func:`backend` builds a configured backend
object that also keeps the report of every graph it compiled.

Logging: the ``quartet_compile`` logger (INFO: a summary per graph, DEBUG: every matmul), which
``TORCH_LOGS=quartet_compile`` (``+quartet_compile`` for DEBUG) or
``torch._logging.set_logs(modules={"quartet_compile": logging.DEBUG})`` switch on.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .config import QuartetConfig
from .kernels import configs
from .nvfp4.randomness import DEFAULT_STREAM, random_stream
from .ops.linear import quantized_linear
from .passes.linear_rewrite import MatmulDecision, rewrite_linears
from .passes.weights import compiled_root
from .version import code_hash

log = logging.getLogger("quartet_compile")


def _inner_compile(gm: fx.GraphModule, example_inputs: list, config: QuartetConfig, mode: str | None) -> Callable:
    if config.inner_backend == "eager":
        return gm.forward
    if config.inner_backend == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)
    if config.cpp_wrapper is None and cpp_wrapper_pays(example_inputs, mode):
        return _inductor_from_cpp_or_python(gm, example_inputs, mode)
    return inductor(gm, example_inputs, mode=mode, cpp_wrapper=config.cpp_wrapper)


def _inductor_from_cpp_or_python(gm: fx.GraphModule, example_inputs: list, mode: str | None) -> Callable:
    """The C++ wrapper the backend chose, or, where Inductor cannot build it (a C++ compiler or
    Python's headers missing), the Python wrapper, with a warning: the same kernels, launched from
    Python. A failure while the backward graph is compiled, at the first backward, is raised."""
    original = copy.deepcopy(gm)
    try:
        return inductor(gm, example_inputs, mode=mode, cpp_wrapper=True)
    except Exception as error:  # noqa: BLE001 - any failure of the optional C++ build
        log.warning("quartet: Inductor's C++ wrapper failed (%s); this graph launches its kernels from Python", error)
        return inductor(original, example_inputs, mode=mode, cpp_wrapper=False)


def inductor(
    gm: fx.GraphModule, example_inputs: list, mode: str | None = None, *, cpp_wrapper: bool | None = None
) -> Callable:
    """Inductor as ``torch.compile(mode=...)`` would run it, callable as a backend object (the
    registered ``"inductor"`` backend takes no ``mode``). ``cpp_wrapper``: whether the graph's
    kernels are launched from generated C++ or from Python (``torch._inductor.config.cpp_wrapper``
    for this graph alone; ``None`` leaves that setting as it is)."""
    from torch._inductor import config
    from torch._inductor.compile_fx import compile_fx

    patches = {**_mode_options(mode), "unsafe_marked_cacheable_functions": cacheable_functions()}
    if cpp_wrapper is not None:
        patches["cpp_wrapper"] = cpp_wrapper
    if patches.get("cpp_wrapper", config.cpp_wrapper):
        ready_autograd_threads(example_inputs)
    if cpp_wrapper:
        # compile_fx adds the C++ wrapper's own settings (cubins kept for the C++ launches) only
        # where cpp_wrapper is set globally: the backward, compiled at the first backward, reads
        # the global setting. A per-graph C++ wrapper carries them itself.
        from torch._inductor.compile_fx import get_cpp_wrapper_config

        with config.patch(patches):
            patches.update(get_cpp_wrapper_config())
    return compile_fx(gm, example_inputs, config_patches=patches or None)


def cacheable_functions() -> dict[str, str]:
    """Inductor's ``unsafe_marked_cacheable_functions`` with :func:`quantized_linear` added, keyed
    by the package's :func:`code_hash`. AOTAutograd caches a graph only if it calls nothing but
    torch's own functions and ops; the pass's calls of :func:`quantized_linear` (traced into the
    ``quartet`` ops by AOTAutograd) made it skip every graph of ours, and every later run of a
    program traced its joint graph again. The function is a function of its arguments, which
    are in the graph, and of the autocast and grad modes, which AOTAutograd's key holds; the
    code hash covers what it runs, and the launch configurations' fingerprint what a tuning
    study may change for a while (:func:`.kernels.configs.override`)."""
    from torch._inductor import config

    name = f"{quantized_linear.__module__}.{quantized_linear.__name__}"
    return {**config.unsafe_marked_cacheable_functions, name: f"{code_hash()}-{configs.fingerprint()}"}


_ready_devices: set[torch.device] = set()
"""CUDA devices whose autograd thread :func:`ready_autograd_threads` has readied in this process."""


def ready_autograd_threads(example_inputs: list) -> None:
    """Make CUDA current on the autograd engine's thread of each CUDA device among a graph's
    inputs, once per process and device, before a graph is compiled with the C++ wrapper.

    Autograd runs a CUDA backward on a thread of its own per device. Where the backward graph is
    loaded from the compile caches (every run of a program after its first), nothing has run on
    that thread yet when the compiled backward starts, and the C++ wrapper's first CUDA driver
    call there fails with "invalid device context" (pytorch/pytorch#144609; seen on torch 2.11 in
    the second run of a training step). One tiny backward on the device runs a kernel there."""
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

    devices = {
        torch.device("cuda", x.device.index if x.device.index is not None else torch.cuda.current_device())
        for x in example_inputs
        if isinstance(x, torch.Tensor) and x.device.type == "cuda" and not isinstance(x, FakeTensor)
    }
    for device in devices - _ready_devices:
        with unset_fake_temporarily(), torch.enable_grad():
            torch.ones(1, device=device, requires_grad=True).sum().backward()
        _ready_devices.add(device)


def cpp_wrapper_pays(example_inputs: list, mode: str | None) -> bool:
    """Whether a graph should launch its kernels from C++ when the user left it open: a CUDA graph
    run without CUDA graphs, whose every launch costs host time (a quantized layer launches about
    6 kernels more than a BF16 one, and Inductor's Python wrapper takes several times the C++
    one's time per launch). CUDA-graph replays launch nothing from the host, and on CPU the
    kernels, not their launches, take the time."""
    from torch._inductor import config as inductor_config

    on_cuda = any(isinstance(x, torch.Tensor) and x.device.type == "cuda" for x in example_inputs)
    return on_cuda and not _mode_options(mode).get("triton.cudagraphs", inductor_config.triton.cudagraphs)


def _mode_options(mode: str | None) -> dict[str, Any]:
    """The Inductor settings ``torch.compile(mode=...)`` patches in (none for the default mode)."""
    from torch._inductor import list_mode_options

    return dict(list_mode_options(mode)) if mode else {}


def log_decisions(decisions: list[MatmulDecision]) -> None:
    for d in decisions:
        route = f", {d.implementation}" if d.implementation else ""
        log.debug("%s %s %s: %s (%s%s)", d.module_path or "<root>", d.op, d.shapes, d.decision, d.reason, route)
    quantized = sum(d.quantized for d in decisions)
    log.info("quartet: quantized %d of %d matmuls", quantized, len(decisions))


class QuartetBackend:
    """A configured backend: ``torch.compile(model, backend=QuartetBackend(config))``.

    ``reports`` holds the decisions for each graph compiled so far (one list per graph). With a
    ``seed``, every graph it compiles draws from one random stream, opened when it is built.
    """

    def __init__(self, config: QuartetConfig | None = None):
        self.config = config or QuartetConfig()
        self.reports: list[list[MatmulDecision]] = []
        self.rng = DEFAULT_STREAM if self.config.seed is None else random_stream(self.config.seed)

    def __call__(self, gm: fx.GraphModule, example_inputs: list, mode: str | None = None) -> Callable:
        decisions = self.rewrite(gm, example_inputs, compiled_root())
        self.reports.append(decisions)
        log_decisions(decisions)
        return _inner_compile(gm, example_inputs, self.config, mode)

    def rewrite(
        self, gm: fx.GraphModule, example_inputs: list, root: nn.Module | None, *, apply: bool = True
    ) -> list[MatmulDecision]:
        """The graph pass with this backend's options; ``root`` names the weights."""
        return rewrite_linears(gm, example_inputs, self.config, root=root, rng=self.rng, apply=apply)


def backend(config: QuartetConfig | None = None, **options: Any) -> QuartetBackend:
    """A backend for ``torch.compile``: ``backend(recipe="nvidia")`` or ``backend(QuartetConfig(...))``."""
    if config is not None and options:
        raise ValueError("pass either a QuartetConfig or keyword options, not both")
    return QuartetBackend(config or QuartetConfig.from_options(options))


_by_options: dict[int, tuple[dict, QuartetBackend]] = {}
"""The backend of each ``options`` dict seen: ``torch.compile(..., options=d)`` passes the same
``d`` to every graph it compiles, so its graphs share one backend (and one random stream)."""


def quartet(
    gm: fx.GraphModule, example_inputs: list, *, mode: str | None = None, options: dict | None = None
) -> Callable:
    """The entry point behind ``backend="quartet"``."""
    if options is None:
        return QuartetBackend()(gm, example_inputs, mode=mode)
    entry = _by_options.get(id(options))
    if entry is None or entry[0] is not options:
        entry = _by_options[id(options)] = (options, QuartetBackend(QuartetConfig.from_options(options)))
    return entry[1](gm, example_inputs, mode=mode)
