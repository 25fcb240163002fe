"""``explain(model, *args, **kwargs)``: one row per matmul saying what the backend would do and why."""

from __future__ import annotations

import itertools
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .compiler import QuartetBackend, log_decisions
from .config import QuartetConfig
from .passes.linear_rewrite import MatmulDecision

_COLUMNS = ("module", "op", "shapes", "decision", "reason", "recipe", "runs on")
_traces = itertools.count()


@dataclass(frozen=True)
class ExplainReport:
    rows: list[MatmulDecision]
    cached_inference_weights: bool = False
    """Whether quantized matmuls without a backward take their weights from the inference cache."""

    @property
    def quantized(self) -> list[MatmulDecision]:
        return [r for r in self.rows if r.quantized]

    @property
    def kept(self) -> list[MatmulDecision]:
        return [r for r in self.rows if not r.quantized]

    def __str__(self) -> str:
        cells = [
            (
                r.module_path or "<root>",
                r.op,
                r.shapes,
                r.decision,
                r.reason,
                *((r.recipe, r.implementation) if r.quantized else ("-", "-")),
            )
            for r in self.rows
        ]
        widths = [max(len(c) for c in col) for col in zip(_COLUMNS, *cells, strict=False)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [line.format(*_COLUMNS).rstrip(), line.format(*("-" * w for w in widths))]
        out += [line.format(*c).rstrip() for c in cells]
        out.append(f"{len(self.quantized)} of {len(self.rows)} matmuls quantized")
        if self.quantized and self.cached_inference_weights:
            out.append("without a backward (no_grad, inference_mode): weights quantized once per parameter version")
        return "\n".join(out)


def _call(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    # _call_impl: the module's hooks and forward, never a compiled call it may carry.
    return module._call_impl(*args, **kwargs)


def explain(
    model: nn.Module,
    *args: Any,
    config: QuartetConfig | None = None,
    options: dict[str, Any] | None = None,
    verbose: bool = True,
    **kwargs: Any,
) -> ExplainReport:
    """Trace ``model(*args, **kwargs)`` with Dynamo and report every matmul without compiling.

    Runs the model once, without autograd. ``config`` or ``options`` (the fields of
    :class:`QuartetConfig`) set the backend's options. Dynamo's caches are left as they were:
    an already compiled ``model`` does not recompile afterwards (the trace goes through a
    function of its own, whose cache entries go with it), and its counters are restored.
    """
    if config is not None and options:
        raise ValueError("pass either a QuartetConfig or options, not both")
    quartet = QuartetBackend(config or QuartetConfig.from_options(options))
    root = getattr(model, "_orig_mod", model)
    rows: list[MatmulDecision] = []

    def capture(gm: torch.fx.GraphModule, inputs: list) -> Callable:
        rows.extend(quartet.rewrite(gm, inputs, root, apply=False))
        return gm.forward

    # A code object of its own, and a name of its own (Dynamo remembers shapes by name and line).
    run = types.FunctionType(_call.__code__.replace(co_name=f"quartet_explain_{next(_traces)}"), _call.__globals__)
    counters = torch._dynamo.utils.counters
    saved = {key: Counter(value) for key, value in counters.items()}
    try:
        with torch.no_grad():
            torch.compile(run, backend=capture)(root, args, kwargs)
    finally:
        counters.clear()
        counters.update(saved)
    report = ExplainReport(rows, quartet.config.cache_inference_weights)
    log_decisions(rows)
    if verbose:
        print(report)
    return report
