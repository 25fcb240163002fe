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

import logging
from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import nn

from .config import QuartetConfig
from .nvfp4.randomness import DEFAULT_STREAM, random_stream
from .passes.linear_rewrite import MatmulDecision, rewrite_linears
from .passes.weights import compiled_root

log = logging.getLogger("quartet_compile")


def _inner_compile(gm: fx.GraphModule, example_inputs: list, config: QuartetConfig, mode: str | None) -> Callable:
    if config.inner_backend == "eager":
        return gm.forward
    if config.inner_backend == "aot_eager":
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)
    return inductor(gm, example_inputs, mode=mode)


def inductor(gm: fx.GraphModule, example_inputs: list, mode: str | None = None) -> Callable:
    """Inductor as ``torch.compile(mode=...)`` would run it, callable as a backend object (the
    registered ``"inductor"`` backend takes no ``mode``)."""
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=list_mode_options(mode) if mode else None)


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
