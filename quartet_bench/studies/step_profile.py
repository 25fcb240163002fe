"""Where a compiled training step's device time goes: per variant,
the median step time next to the sum of its kernels' device times, split into GEMMs, NVFP4
quantizers, attention, optimizer and the rest, and the most expensive kernels.

    python -m quartet_bench.studies.step_profile --model 30m --batch 64 --seq-len 512 --variants inductor,quartet2
    python -m quartet_bench.studies.step_profile --model 1b --batch 4 --seq-len 2048 --out bench/results

The step is the training loop's (autocast bf16, backward, clipping, AdamW) on one fixed batch.
"host" is the median time until the step's Python returns, before waiting for the device: a
step whose host time equals its step time, well above its kernel sum, is host-bound (the GPU
waits for launches; ``--mode reduce-overhead`` removes that). On CPU the step is timed and no
kernels are listed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from .. import report
from ..models import ModelSpec
from ..training import Timer, TrainSettings, optimizer_for, train_step
from ..variants import Kind, backend_for, parse_variants

FAMILIES = {
    "gemm": r"gemm|nvjet|cutlass|xmma|cublas|_scale_epilogue_kernel",
    "quantizers": r"_ms_eden_kernel|_quantize_kernel|_stats_kernel|_nvidia_kernel|_rotation_kernel|_dequantize_kernel",
    "attention": r"sdpa|flash|fmha|attention",
    "optimizer": r"multi_tensor|foreach|adam",
}
"""Kernel-name patterns of each family (first match wins); anything else is ``other``: the
Inductor-fused elementwise and reduction kernels, copies, memsets."""


def family(kernel: str) -> str:
    return next((name for name, pattern in FAMILIES.items() if re.search(pattern, kernel, re.IGNORECASE)), "other")


def breakdown(kernels: Iterable[tuple[str, float]], steps: int, top: int = 10) -> dict:
    """Per-step device ms by family and of the ``top`` kernels, from ``(name, us)`` events of
    ``steps`` steps."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for name, us in kernels:
        by_name[name].append(us)
    families = dict.fromkeys([*FAMILIES, "other"], 0.0)
    for name, times in by_name.items():
        families[family(name)] += sum(times) / steps / 1e3
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))[:top]
    return {
        "kernel_ms": sum(families.values()),
        "launches": sum(len(t) for t in by_name.values()) / steps,
        "families_ms": families,
        "top": [{"kernel": n, "ms": sum(t) / steps / 1e3, "launches": len(t) / steps} for n, t in ranked],
    }


def training_step(
    variant: str, spec: ModelSpec, settings: TrainSettings, device: torch.device, inner: str
) -> Callable[[], None]:
    """:func:`training.train_step` of ``spec`` compiled as ``variant`` on a fixed random batch;
    ``inner`` compiles quartet's rewritten graph."""
    chosen = parse_variants(variant)[0]
    if chosen.kind not in (Kind.EAGER, Kind.INDUCTOR, Kind.QUARTET):
        raise SystemExit(f"{variant}: the step profile covers eager, inductor and quartet variants")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = spec.build().to(device)
    backend = backend_for(chosen, {"inner_backend": inner})
    step_fn = model if backend is None else torch.compile(model, backend=backend, mode=settings.compile_mode)
    params = list(model.parameters())
    optimizer = optimizer_for(params, settings)
    tokens = torch.randint(0, 256, (settings.batch, settings.seq_len + 1), device=device)
    return lambda: train_step(step_fn, tokens, params, optimizer, device, settings)


def measure(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    """Median ms of ``steps`` steps after ``warmup`` (the training loop's timer) and of their
    host issue time, then ``steps`` more under the profiler for the kernel breakdown."""
    for _ in range(warmup):
        step()
    timer = Timer(device)
    times, host = [], []
    for _ in range(steps):
        start = timer.start()
        issued = time.perf_counter()
        step()
        host.append((time.perf_counter() - issued) * 1e3)
        times.append(timer.elapsed_ms(start))
    with profile(activities=[ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    kernels = [(e.name, e.device_time) for e in prof.events() if e.device_type.name == "CUDA"]
    return {"step_ms": statistics.median(times), "host_ms": statistics.median(host), **breakdown(kernels, steps)}


def markdown(rows: list[dict], meta: dict) -> str:
    columns = [*FAMILIES, "other"]
    lines = [*report.markdown_header("Training step: device time by kernel family", meta)]
    lines += [f"{meta['model']}, batch {meta['batch']} x {meta['seq_len']}, mode {meta['mode']}; ms per step.", ""]
    lines += ["| variant | step | host | kernels (launches) | " + " | ".join(columns) + " |",
              "|---|---:|---:|---:|" + "---:|" * len(columns)]  # fmt: skip
    for r in rows:
        cells = [f"{r['step_ms']:.2f}", f"{r['host_ms']:.2f}", f"{r['kernel_ms']:.2f} ({r['launches']:.0f})"]
        cells += [f"{r['families_ms'][c]:.2f}" for c in columns]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    for r in rows:
        lines += ["", f"{r['variant']}: most expensive kernels", "", "| kernel | ms | launches |", "|---|---:|---:|"]
        lines += [f"| `{t['kernel'][:70]}` | {t['ms']:.3f} | {t['launches']:.0f} |" for t in r["top"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="30m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--variants", default="inductor,quartet2")
    parser.add_argument("--mode", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--inner-backend", default="inductor", help="what compiles quartet's rewritten graph")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="step-profile")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    meta = {**report.environment(device), "model": args.model, "batch": args.batch, "seq_len": args.seq_len,
            "mode": args.mode or "default"}  # fmt: skip
    rows = []
    for variant in args.variants.split(","):
        settings = TrainSettings(batch=args.batch, seq_len=args.seq_len, compile_mode=args.mode)
        step = training_step(variant, ModelSpec(args.model), settings, device, args.inner_backend)
        rows.append({"variant": variant, **measure(step, device, args.warmup, args.steps)})
        row = rows[-1]
        print(f"{variant}: {row['step_ms']:.2f} ms per step, host {row['host_ms']:.2f}, kernels {row['kernel_ms']:.2f}",
              flush=True)  # fmt: skip
    text = markdown(rows, meta)
    print(text)
    if args.out:
        report.write_result(args.out, f"{args.name}-{args.model}", {**meta, "rows": rows}, text)


if __name__ == "__main__":
    main()
