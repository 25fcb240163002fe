"""``explain(model, *inputs)``: one row per matmul saying what the backend would do and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .config import QuartetConfig
from .dynamo_backend import log_decisions
from .passes.linear_rewrite import MatmulDecision, rewrite_linears

_COLUMNS = ("module", "op", "shapes", "decision", "reason", "recipe")


@dataclass(frozen=True)
class ExplainReport:
    rows: list[MatmulDecision]

    @property
    def quantized(self) -> list[MatmulDecision]:
        return [r for r in self.rows if r.quantized]

    @property
    def kept(self) -> list[MatmulDecision]:
        return [r for r in self.rows if not r.quantized]

    def __str__(self) -> str:
        cells = [
            (r.module_path or "<root>", r.op, r.shapes, r.decision, r.reason, r.recipe if r.quantized else "-")
            for r in self.rows
        ]
        widths = [max(len(c) for c in col) for col in zip(_COLUMNS, *cells, strict=False)]
        line = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [line.format(*_COLUMNS).rstrip(), line.format(*("-" * w for w in widths))]
        out += [line.format(*c).rstrip() for c in cells]
        out.append(f"{len(self.quantized)} of {len(self.rows)} matmuls quantized")
        return "\n".join(out)


def explain(
    model: torch.nn.Module,
    *example_inputs: Any,
    config: QuartetConfig | None = None,
    verbose: bool = True,
    **options: Any,
) -> ExplainReport:
    """Trace ``model(*example_inputs)`` with Dynamo and report every matmul without compiling.

    Runs the model once (without autograd) and resets Dynamo's caches before and after, so
    the report reflects exactly these inputs. ``options`` are :class:`QuartetConfig` fields.
    """
    config = config or QuartetConfig.from_options(options)
    rows: list[MatmulDecision] = []

    def capture(gm: torch.fx.GraphModule, inputs: list):
        rows.extend(rewrite_linears(gm, inputs, config, apply=False))
        return gm.forward

    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(model, backend=capture)(*example_inputs)
    finally:
        torch._dynamo.reset()
    report = ExplainReport(rows)
    log_decisions(rows)
    if verbose:
        print(report)
    return report
