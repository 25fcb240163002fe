"""Where a compiled training step's host time goes: the step's Python under ``cProfile``, per
variant, split into the machinery that launches Triton kernels, tensor allocations, tensor views,
the generated graph code itself, and everything else, with per-step call counts.

    python -m quartet_bench.studies.host_profile --model 30m --batch 16 --seq-len 512
    python -m quartet_bench.studies.host_profile --hf-config llama --hf-set hidden_size=1024 ... --seq-len 1024

Wall-clock host time varies between processes by a third and more for one code (the step profile
measures it once per process), while the calls a step makes are fixed by its compiled graphs: the
counts here (kernel launches, allocations, views) compare code changes exactly, and the times,
inflated by the profiler, show which machinery a launch pays for. Each step is followed by a device
synchronization outside the profiled region, so a full launch queue does not show as launch time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import re
from collections.abc import Callable

import torch

from .. import report
from ..arguments import HelpFormatter, add_model_arguments, add_step_arguments, add_variant_arguments, spec_from
from .step_profile import step_meta, variant_steps

BUCKETS = {
    "launch": r"triton/|triton_heuristics|static_triton_launcher|_launch_kernel|__triton_launcher|get_raw_stream|"
    r"_cuda_getCurrentRawStream",
    "allocation": r"_empty_strided_|method empty\b|method empty_strided\b|method zeros\b",
    "view": r"_reinterpret_tensor|as_strided",
    "graph code": r"torchinductor_",
}
"""Patterns over ``file:function`` of each function's own (exclusive) time; first match wins,
anything else is ``other`` (autograd, AOT runtime wrappers, the optimizer, extern kernels)."""

COUNTED = {
    "launches": r"triton_heuristics\.py:run$",
    "allocations": r"_empty_strided_",
    "views": r"_reinterpret_tensor",
}
"""Per-step call counts: Triton kernel launches from generated code (Inductor's and user kernels
alike), device allocations and reinterpreting views made by generated code."""


def _name(key: tuple[str, int, str]) -> str:
    filename, _, function = key
    return f"{filename}:{function}"


def breakdown(stats: pstats.Stats, steps: int, top: int = 12) -> dict:
    """Exclusive ms per step by :data:`BUCKETS`, call counts per step by :data:`COUNTED`, and the
    ``top`` functions by exclusive time."""
    buckets = dict.fromkeys([*BUCKETS, "other"], 0.0)
    counts = dict.fromkeys(COUNTED, 0.0)
    functions = []
    for key, (_, calls, exclusive, _, _) in stats.stats.items():
        name = _name(key)
        bucket = next((b for b, pattern in BUCKETS.items() if re.search(pattern, name)), "other")
        buckets[bucket] += exclusive * 1e3 / steps
        for counted, pattern in COUNTED.items():
            if re.search(pattern, name):
                counts[counted] += calls / steps
        functions.append((exclusive * 1e3 / steps, calls / steps, name))
    functions.sort(reverse=True)
    return {
        "profiled_ms": sum(buckets.values()),
        "buckets_ms": buckets,
        "counts": counts,
        "top": [{"function": name, "ms": ms, "calls": calls} for ms, calls, name in functions[:top]],
    }


def profile_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    """:func:`breakdown` of ``steps`` steps after ``warmup``, each step profiled alone and followed
    by a synchronization outside the profile."""
    for _ in range(warmup):
        step()
    profiler = cProfile.Profile()
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        profiler.enable()
        step()
        profiler.disable()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return breakdown(pstats.Stats(profiler), steps)


def per_linear(row: dict, base: dict) -> dict | None:
    """A quartet variant's excess over ``base`` per linear layer it took over: profiled ms and
    each counted call."""
    n = row["quartet_linears"]
    if not n:
        return None
    return {"ms": (row["profiled_ms"] - base["profiled_ms"]) / n,
            **{k: (row["counts"][k] - base["counts"][k]) / n for k in COUNTED}}  # fmt: skip


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [*report.markdown_header("Training step: host time by machinery (cProfile)", meta)]
    lines += [f"{meta['model']}, batch {meta['batch']} x {meta['seq_len']}; ms per step under the profiler "
              "(exclusive time of each function, summed by what it belongs to), calls per step.", ""]  # fmt: skip
    header = ["variant", "profiled", *BUCKETS, "other", *COUNTED, "quartet linears", "per linear: ms, calls"]
    cells = []
    for r in rows:
        excess = None if r is rows[0] else per_linear(r, rows[0])  # the first variant is the baseline
        extra = "-" if excess is None else ", ".join(f"{v:.3f}" if k == "ms" else f"{k} {v:.1f}"
                                                     for k, v in excess.items())  # fmt: skip
        buckets = [f"{r['buckets_ms'][b]:.2f}" for b in [*BUCKETS, "other"]]
        counts = [f"{r['counts'][c]:.0f}" for c in COUNTED]
        cells.append([r["variant"], f"{r['profiled_ms']:.2f}", *buckets, *counts, str(r["quartet_linears"]), extra])
    lines.append(report.markdown_table(header, cells))
    for r in rows:
        lines += ["", f"{r['variant']}: functions with the most exclusive time", "", "| function | ms | calls |",
                  "|---|---:|---:|"]  # fmt: skip
        lines += [f"| `{t['function'][-90:]}` | {t['ms']:.3f} | {t['calls']:.0f} |" for t in r["top"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "30m")
    add_step_arguments(parser, steps=10, name="host-profile")
    add_variant_arguments(parser, variants_help="the first is the baseline", mode=False)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    spec = spec_from(args)
    meta = step_meta(args, spec, device)
    rows = []
    for variant, step, taken_over in variant_steps(args, spec, device):
        rows.append({"variant": variant, **profile_steps(step, device, args.warmup, args.steps),
                     "quartet_linears": taken_over()})  # fmt: skip
        print(f"{variant}: {rows[-1]['profiled_ms']:.2f} ms per step under the profiler, {rows[-1]['counts']}",
              flush=True)  # fmt: skip
    report.publish(markdown(rows, meta), args.out, args.name, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
