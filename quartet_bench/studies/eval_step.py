"""Evaluation inside training: the compiled model's loss on a batch under ``torch.no_grad`` (the
inference path, each weight quantized once per parameter version), against the same forward
with autograd on (the training forward, which quantizes both operands and keeps FP4 copies
for the backward), the inference path with its weight cache off, and the BF16 model's
``no_grad`` forward, all measured in one run.

    python -m quartet_bench.studies.eval_step --hf-config llama --hf-set hidden_size=1024 ... --seq-len 1024

Each row: median ms per forward, host time, kernel time, launches and quantizer time per forward,
and the ratio to the BF16 ``no_grad`` forward.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch

from quartet_compile import QuartetConfig, backend

from .. import report
from ..arguments import HelpFormatter, add_model_arguments, add_step_arguments, spec_from
from .step_profile import measure_all, step_meta

CASES = {
    "bf16 no_grad": ("inductor", True, False),
    "quartet2 training forward": ("quartet2", False, True),
    "quartet2 no_grad, weights cached": ("quartet2", True, True),
    "quartet2 no_grad, no cache": ("quartet2", True, False),
}
"""Row -> (compiled as, under no_grad, weight cache on)."""


def forward_step(model: torch.nn.Module, compiled_as: str, no_grad: bool, cache: bool, tokens: torch.Tensor
                 ) -> Callable[[], None]:  # fmt: skip
    """One forward of ``model`` compiled as ``compiled_as`` under bf16 autocast, with or without
    autograd (the loss's graph is dropped at once, as an evaluation loop does). Each case's
    backend is a new object, so the cases' compiled code lives side by side in Dynamo's cache."""
    chosen = "inductor" if compiled_as == "inductor" else backend(QuartetConfig(cache_inference_weights=cache))
    compiled = torch.compile(model, backend=chosen)

    def step() -> None:
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16), torch.set_grad_enabled(not no_grad):
            compiled(tokens)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "30m")
    add_step_arguments(parser, steps=10, name="eval-step")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    spec = spec_from(args)
    meta = step_meta(args, spec, device)
    torch.manual_seed(0)
    model = spec.build().to(device)
    tokens = torch.randint(0, 256, (args.batch, args.seq_len + 1), device=device)
    torch._dynamo.reset()
    steps = ((case, forward_step(model, *how, tokens)) for case, how in CASES.items())
    rows = []
    for case, row in measure_all(steps, device, args.warmup, args.steps):
        rows.append({"case": case, **row, "x": row["step_ms"] / rows[0]["step_ms"] if rows else 1.0})
    header = ["case", "ms", "x bf16", "host ms", "kernel ms", "launches", "quantizers ms", "gemm ms"]
    cells = [[r["case"], f"{r['step_ms']:.2f}", f"{r['x']:.2f}", f"{r['host_ms']:.2f}", f"{r['kernel_ms']:.2f}",
              f"{r['launches']:.0f}", f"{r['families_ms']['quantizers']:.2f}", f"{r['families_ms']['gemm']:.2f}"]
             for r in rows]  # fmt: skip
    caption = (f"{spec.label}, batch {args.batch} x {args.seq_len}, bf16 autocast; ms per forward (medians of "
               f"{args.steps}), ratios to the BF16 no_grad forward.")  # fmt: skip
    lines = [*report.markdown_header("Evaluation forward: the inference path", meta), caption, "",
             report.markdown_table(header, cells)]  # fmt: skip
    report.publish("\n".join(lines) + "\n", args.out, args.name, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
