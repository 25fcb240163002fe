"""The ``quartet`` torch.compile backend: rewrite linear matmuls, then compile with Inductor.

``torch.compile(model, backend="quartet")`` finds :func:`quartet` through the
``torch_dynamo_backends`` entry point; ``options={...}`` takes the fields of
:class:`~quartet_compile.config.QuartetConfig`. :func:`backend` builds a configured backend
object that also keeps the report of every graph it compiled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch.fx as fx

from .config import QuartetConfig
from .ops import reseed
from .passes.linear_rewrite import MatmulDecision, rewrite_linears

log = logging.getLogger("quartet_compile")


def _register_torch_log() -> None:
    """Let ``TORCH_LOGS=quartet`` / ``torch._logging.set_logs(quartet=...)`` switch our logger on.
    ``register_log`` is private (stable since torch 2.1); without it, plain ``logging`` still works."""
    try:
        from torch._logging._internal import register_log

        register_log("quartet", "quartet_compile")
    except (ImportError, AttributeError, TypeError):
        log.debug("torch._logging.register_log unavailable; use logging.getLogger('quartet_compile')")


_register_torch_log()


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
        log.debug("%s %s %s: %s (%s)", d.module_path or "<root>", d.op, d.shapes, d.decision, d.reason)
    quantized = sum(d.quantized for d in decisions)
    log.info("quartet: quantized %d of %d matmuls", quantized, len(decisions))


class QuartetBackend:
    """A configured backend: ``torch.compile(model, backend=QuartetBackend(config))``.

    ``reports`` holds the decisions for each graph compiled so far (one list per graph).
    """

    def __init__(self, config: QuartetConfig | None = None):
        self.config = config or QuartetConfig()
        self.reports: list[list[MatmulDecision]] = []
        if self.config.seed is not None:
            reseed(self.config.seed)

    def __call__(self, gm: fx.GraphModule, example_inputs: list, mode: str | None = None) -> Callable:
        decisions = rewrite_linears(gm, example_inputs, self.config)
        self.reports.append(decisions)
        log_decisions(decisions)
        return _inner_compile(gm, example_inputs, self.config, mode)


def backend(config: QuartetConfig | None = None, **options: Any) -> QuartetBackend:
    """A backend for ``torch.compile``: ``backend(recipe="nvidia")`` or ``backend(QuartetConfig(...))``."""
    if config is not None and options:
        raise ValueError("pass either a QuartetConfig or keyword options, not both")
    return QuartetBackend(config or QuartetConfig.from_options(options))


def quartet(
    gm: fx.GraphModule, example_inputs: list, *, mode: str | None = None, options: dict | None = None
) -> Callable:
    """The entry point behind ``backend="quartet"``."""
    return QuartetBackend(QuartetConfig.from_options(options))(gm, example_inputs, mode=mode)
