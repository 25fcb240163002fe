"""Where a compiled training step's time goes: per variant, the median step time and its ratio to
the first variant (the baseline, measured in the same run), the host time, the sum of its kernels'
device times split into GEMMs, NVFP4 quantizers, attention, optimizer and the rest, launches per
step, peak memory, and the most expensive kernels.

    python -m quartet_bench.studies.step_profile --model 30m --batch 16 --seq-len 512
    python -m quartet_bench.studies.step_profile --hf-config llama --hf-set hidden_size=1024 ... --seq-len 1024
    python -m quartet_bench.studies.step_profile --model 1b --batch 4 --seq-len 2048 --mode reduce-overhead
    python -m quartet_bench.studies.step_profile --variants inductor,quartet2,quartet2+fuse_projections

The step is the training loop's (autocast bf16, backward, clipping, AdamW) on one fixed batch.
"host" is the median time until the step's Python returns, before waiting for the device: a
step whose host time equals its step time, well above its kernel sum, is host-bound (the GPU
waits for launches; ``--mode reduce-overhead`` removes that). On CPU the step is timed and no
kernels are listed. "first step s" is the first step's wall time, the compile included. For each
quartet variant, "host us / linear" and "launches / linear" are its excess over the baseline
divided by the number of linear layers the backend took over: what one such layer's forward and
backward add to the step beyond the BF16 layer it replaces (for the ``bf16`` recipe, the cost of
the op layer alone). "device mallocs" counts the caching allocator's ``cudaMalloc`` and
``cudaFree`` calls per timed step: nonzero means the allocator has not settled, and a free waits
for the device, which inflates host time. Every variant is timed before any is profiled (a
profile slows every later launch in the process), so all of them stay on the device together.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch.profiler import ProfilerActivity, profile

from .. import report
from ..arguments import HelpFormatter, add_model_arguments, add_step_arguments, add_variant_arguments, spec_from
from ..models import ModelSpec
from ..training import Timer, TrainSettings, optimizer_for, train_step
from ..variants import Kind, backend_for, parse_variants

Name = TypeVar("Name")

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


TOP = 10
"""Kernels the markdown lists per variant; the JSON keeps every kernel (launch counts by name)."""


def breakdown(kernels: Iterable[tuple[str, float]], steps: int) -> dict:
    """Per-step device ms by family and of every kernel, most expensive first, from
    ``(name, us)`` events of ``steps`` steps."""
    by_name: dict[str, list[float]] = defaultdict(list)
    for name, us in kernels:
        by_name[name].append(us)
    families = dict.fromkeys([*FAMILIES, "other"], 0.0)
    for name, times in by_name.items():
        families[family(name)] += sum(times) / steps / 1e3
    ranked = sorted(by_name.items(), key=lambda item: -sum(item[1]))
    return {
        "kernel_ms": sum(families.values()),
        "launches": sum(len(t) for t in by_name.values()) / steps,
        "families_ms": families,
        "top": [{"kernel": n, "ms": sum(t) / steps / 1e3, "launches": len(t) / steps} for n, t in ranked],
    }


def training_step(
    variant: str, spec: ModelSpec, settings: TrainSettings, device: torch.device, inner: str
) -> tuple[Callable[[], None], Callable[[], int]]:
    """:func:`training.train_step` of ``spec`` compiled as ``variant`` on a fixed random batch,
    and a count of the linear layers the quartet backend took over so far; ``inner`` compiles
    quartet's rewritten graph."""
    chosen = parse_variants(variant)[0]
    if chosen.kind not in (Kind.EAGER, Kind.INDUCTOR, Kind.QUARTET):
        raise SystemExit(f"{variant}: the step profile covers eager, inductor and quartet variants")
    torch.manual_seed(0)
    model = spec.build().to(device)
    backend = backend_for(chosen, {"inner_backend": inner})
    step_fn = model if backend is None else torch.compile(model, backend=backend, mode=settings.compile_mode)
    params = list(model.parameters())
    optimizer = optimizer_for(params, settings)
    tokens = torch.randint(0, 256, (settings.batch, settings.seq_len + 1), device=device)
    reports = getattr(getattr(backend, "inner", None), "reports", [])

    def taken_over() -> int:
        return sum(d.quantized for report in reports for d in report)

    return lambda: train_step(step_fn, tokens, params, optimizer, device, settings), taken_over


def step_meta(args: argparse.Namespace, spec: ModelSpec, device: torch.device) -> dict:
    """Device, versions, command, model and batch shape: what every step study's result records."""
    return {**report.environment(device), "model": spec.label, "hf_set": args.hf_set, "batch": args.batch,
            "seq_len": args.seq_len}  # fmt: skip


def variant_steps(
    args: argparse.Namespace, spec: ModelSpec, device: torch.device, compile_mode: str | None = None
) -> Iterator[tuple[str, Callable[[], None], Callable[[], int]]]:
    """Each of ``args.variants`` with its :func:`training_step` on ``args``' batch shape, built
    only when the previous one has been measured. Dynamo's caches are cleared once, before the
    first: the variants' compiled steps live side by side (each under its own backend)."""
    if len(args.variants) > torch._dynamo.config.recompile_limit:
        raise SystemExit(f"at most {torch._dynamo.config.recompile_limit} variants: Dynamo's recompile limit")
    torch._dynamo.reset()
    for variant in args.variants:
        settings = TrainSettings(batch=args.batch, seq_len=args.seq_len, compile_mode=compile_mode)
        yield variant, *training_step(variant, spec, settings, device, args.inner_backend)


def measure_all(
    steps_by_name: Iterable[tuple[Name, Callable[[], None]]], device: torch.device, warmup: int, steps: int
) -> list[tuple[Name, dict]]:
    """:func:`time_steps` and :func:`profile_kernels` of each named step, every one timed before
    any is profiled: once the profiler has run, CUPTI stays subscribed in the process and slows
    every later launch (pytorch/pytorch#144455), so a step timed after another's profile would pay
    for it in host time. The steps are built one at a time and all kept until their profiles: their
    parameters and optimizer states stay on the device meanwhile, and each step's peak counts from
    what the earlier ones hold. A profiled step that compiles again (its compiled code was dropped)
    is an error: its kernels would be the compiler's."""
    timed = []
    held = _allocated(device)
    for name, step in steps_by_name:
        row = time_steps(step, device, warmup, steps)
        timed.append((name, step, {**row, "peak_gib": row["peak_gib"] - held}))
        held = _allocated(device)
        print(f"{name}: {row['step_ms']:.2f} ms per step, host {row['host_ms']:.2f}", flush=True)
    graphs = _graphs_compiled()
    measured = [(name, {**row, **profile_kernels(step, device, steps)}) for name, step, row in timed]
    if _graphs_compiled() != graphs:
        raise RuntimeError("a step compiled again while its kernels were profiled; its profile is the compiler's")
    return measured


def time_steps(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> dict:
    """Seconds of the first step (which compiles), then median ms of ``steps`` steps after
    ``warmup`` (the training loop's timer) and of their host issue time, peak memory and device
    allocations per step."""
    started = time.perf_counter()
    step()
    _synchronize(device)
    first_step_s = time.perf_counter() - started
    for _ in range(warmup - 1):
        step()
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer(device)
    times, host = [], []
    allocator = _allocator_counts(device)
    for _ in range(steps):
        start = timer.start()
        issued = time.perf_counter()
        step()
        host.append((time.perf_counter() - issued) * 1e3)
        times.append(timer.elapsed_ms(start))
    device_mallocs = (_allocator_counts(device) - allocator) / steps
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_ms": statistics.median(times), "host_ms": statistics.median(host), "peak_gib": peak,
            "device_mallocs": device_mallocs, "first_step_s": first_step_s}  # fmt: skip


def profile_kernels(step: Callable[[], None], device: torch.device, steps: int) -> dict:
    """:func:`breakdown` of ``steps`` steps under the profiler, after one outside it: whatever a
    step does first when it follows another variant's steps (a CUDA-graph tree switching to its
    graphs) stays out of the profile."""
    step()
    _synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
        _synchronize(device)
    return breakdown([(e.name, e.device_time) for e in prof.events() if e.device_type.name == "CUDA"], steps)


def _allocated(device: torch.device) -> float:
    """GiB the caching allocator has handed out on ``device`` (0 off CUDA)."""
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def _graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocator_counts(device: torch.device) -> float:
    """The caching allocator's ``cudaMalloc`` and ``cudaFree`` calls so far (``nan`` off CUDA): a
    step that makes any is not in the allocator's steady state, and a free waits for the device,
    which shows as host time."""
    if device.type != "cuda":
        return float("nan")
    stats = torch.cuda.memory_stats(device)
    return float(stats.get("num_device_alloc", 0) + stats.get("num_device_free", 0))


def per_linear(row: dict, base: dict) -> dict:
    """Ratios to ``base`` and, for a quartet variant, its excess host time and launches over
    ``base`` per linear layer it took over."""
    ratios = {"x_step": row["step_ms"] / base["step_ms"], "x_kernels": row["kernel_ms"] / max(base["kernel_ms"], 1e-9)}
    n = row["quartet_linears"]
    if not n:
        return ratios
    return {**ratios, "host_us_per_linear": 1e3 * (row["host_ms"] - base["host_ms"]) / n,
            "launches_per_linear": (row["launches"] - base["launches"]) / n}  # fmt: skip


def markdown(rows: list[dict], meta: dict) -> str:
    columns = [*FAMILIES, "other"]
    lines = [*report.markdown_header("Training step: host and device time", meta)]
    lines += [f"{meta['model']}, batch {meta['batch']} x {meta['seq_len']}, mode {meta['mode']}; ms per step, "
              f"ratios to {rows[0]['variant']}.", ""]  # fmt: skip
    header = ["variant", "step", "x", "host", "kernels", "x kernels", "launches", "quartet linears",
              "host us / linear", "launches / linear", "peak GiB", "device mallocs", "first step s",
              *columns]  # fmt: skip
    cells = []
    for r in rows:
        extra = [f"{r[k]:.0f}" if k in r else "-" for k in ("host_us_per_linear", "launches_per_linear")]
        cells.append([r["variant"], f"{r['step_ms']:.2f}", f"{r['x_step']:.2f}", f"{r['host_ms']:.2f}",
                      f"{r['kernel_ms']:.2f}", f"{r['x_kernels']:.2f}", f"{r['launches']:.0f}",
                      str(r["quartet_linears"]), *extra, f"{r['peak_gib']:.2f}", f"{r['device_mallocs']:.1f}",
                      f"{r['first_step_s']:.1f}", *(f"{r['families_ms'][c]:.2f}" for c in columns)])  # fmt: skip
    lines.append(report.markdown_table(header, cells))
    for r in rows:
        lines += ["", f"{r['variant']}: most expensive kernels", "", "| kernel | ms | launches |", "|---|---:|---:|"]
        lines += [f"| `{t['kernel'][:70]}` | {t['ms']:.3f} | {t['launches']:.0f} |" for t in r["top"][:TOP]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "30m")
    add_step_arguments(parser, steps=5, name="step-profile")
    add_variant_arguments(parser, variants_help="the first is the baseline")
    parser.add_argument("--cpp-wrapper", action="store_true", help="Inductor launches kernels from generated C++")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch._inductor.config.cpp_wrapper = args.cpp_wrapper
    spec = spec_from(args)
    mode = (args.mode or "default") + (" + cpp_wrapper" if args.cpp_wrapper else "")
    meta = {**step_meta(args, spec, device), "mode": mode}
    built = []

    def steps() -> Iterator[tuple[str, Callable[[], None]]]:
        for variant, step, taken_over in variant_steps(args, spec, device, args.mode):
            built.append(taken_over)
            yield variant, step

    rows = []
    measured_steps = measure_all(steps(), device, args.warmup, args.steps)
    for (variant, measured), taken_over in zip(measured_steps, built, strict=True):
        row = {"variant": variant, **measured, "quartet_linears": taken_over()}
        rows.append({**row, **per_linear(row, rows[0] if rows else row)})
    report.publish(markdown(rows, meta), args.out, args.name, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
