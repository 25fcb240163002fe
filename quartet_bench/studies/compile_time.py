"""What the first compiled training step costs: per variant, in a process of its own with empty
compile caches (Inductor's and Triton's), the first step's wall time (the compile included), the
second step's, the first step of a second process over the caches the first one filled (a later
run of the same program), and the compiler's timed phases (``torch._dynamo.utils.compilation_time_metrics``,
the functions PyTorch times with ``dynamo_timed``; they nest, so they do not add up).

    python -m quartet_bench.studies.compile_time --model 30m --batch 16 --seq-len 512
    python -m quartet_bench.studies.compile_time --variants inductor,quartet2,quartet2+cpp_wrapper=false

Each variant runs in a fresh process because caches fill across variants: Triton kernels one
variant compiled are loaded by the next, and a first step measured after another variant's is
not a user's first step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .. import report
from ..arguments import HelpFormatter, add_model_arguments, add_step_arguments, add_variant_arguments, spec_from
from ..models import ModelSpec
from ..training import TrainSettings
from .step_profile import step_meta, training_step

TOP_PHASES = 10
"""Timed phases listed per variant, slowest first."""


def first_steps(variant: str, spec: ModelSpec, settings: TrainSettings, device: torch.device, inner: str) -> dict:
    """Wall seconds of the first two steps of ``variant`` and the compiler's timed phases
    (seconds summed per phase, calls) during them."""
    step, taken_over = training_step(variant, spec, settings, device, inner)
    metrics = torch._dynamo.utils.compilation_time_metrics
    metrics.clear()
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    phases = sorted(((name, sum(times), len(times)) for name, times in metrics.items()), key=lambda p: -p[1])
    counters = torch._dynamo.utils.counters
    caches = {f"{group}.{name}": n for group in ("inductor", "aot_autograd")
              for name, n in counters[group].items() if "cache" in name}  # fmt: skip
    return {"first_step_s": seconds[0], "second_step_s": seconds[1], "quartet_linears": taken_over(),
            "phases": [{"phase": name, "s": s, "calls": calls} for name, s, calls in phases], "caches": caches,
            "cache_dirs": [os.environ.get("TORCHINDUCTOR_CACHE_DIR"), os.environ.get("TRITON_CACHE_DIR")]}  # fmt: skip


def _child_argv(args: argparse.Namespace, variant: str, out: Path) -> list[str]:
    argv = ["--model", args.model, "--batch", str(args.batch), "--seq-len", str(args.seq_len),
            "--device", args.device, "--inner-backend", args.inner_backend, "--child", variant,
            "--child-out", str(out)]  # fmt: skip
    argv += ["--hf-config", args.hf_config] if args.hf_config else []
    argv += [arg for pair in args.hf_set for arg in ("--hf-set", pair)]
    return argv + (["--mode", args.mode] if args.mode else [])


def _child(args: argparse.Namespace, variant: str, env: dict, out: Path) -> dict:
    command = [sys.executable, "-m", "quartet_bench.studies.compile_time", *_child_argv(args, variant, out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant}: the compile-time process failed:\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())


def in_fresh_process(args: argparse.Namespace, variant: str) -> dict:
    """:func:`first_steps` of ``variant`` in a new Python process whose Inductor and Triton
    caches are empty directories of its own, then in another new process over the caches the
    first one filled: what every later run of the same program pays (``warm_*``)."""
    with tempfile.TemporaryDirectory(prefix="compile-time-") as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "TRITON_CACHE_DIR": f"{tmp}/triton"}
        cold = _child(args, variant, env, Path(tmp) / "cold.json")
        warm = _child(args, variant, env, Path(tmp) / "warm.json")
    return {**cold, **{f"warm_{key}": warm[key] for key in ("first_step_s", "phases", "caches")}}


def _hits(caches: dict[str, int]) -> str:
    """A process's lookups in Inductor's graph cache and AOTAutograd's: ``fx 2 hit, aot 1 bypass``."""
    short = {"inductor.fxgraph_cache_": "fx", "aot_autograd.autograd_cache_": "aot"}
    cells = [f"{short[prefix]} {n} {name.removeprefix(prefix)}" for name, n in sorted(caches.items())
             for prefix in short if name.startswith(prefix)]  # fmt: skip
    return ", ".join(cells) or "-"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [*report.markdown_header("First training step: compile time", meta)]
    lines += [f"{meta['model']}, batch {meta['batch']} x {meta['seq_len']}, mode {meta['mode']}; each variant in "
              "a process of its own with empty Inductor and Triton caches, then in another process over the caches "
              "the first filled (a later run of the same program).", ""]  # fmt: skip
    cells = [[r["variant"], f"{r['first_step_s']:.1f}", f"{r['second_step_s']:.3f}",
              f"{r['first_step_s'] - r['second_step_s']:.1f}", f"{r['warm_first_step_s']:.1f}",
              _hits(r["warm_caches"]), str(r["quartet_linears"])] for r in rows]  # fmt: skip
    lines.append(report.markdown_table(["variant", "first step s", "second step s", "first - second s",
                                        "first step s, caches filled", "its cache lookups",
                                        "quartet linears"], cells))  # fmt: skip
    for r in (r for r in rows if r["phases"]):
        lines += ["", f"{r['variant']}: slowest timed phases (nested: a phase's time includes the phases it calls)", ""]
        top = [[f"`{p['phase']}`", f"{p['s']:.2f}", str(p["calls"])] for p in r["phases"][:TOP_PHASES]]
        lines.append(report.markdown_table(["phase", "s", "calls"], top))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "30m")
    add_step_arguments(parser, steps=2, name="compile-time")
    add_variant_arguments(parser, variants_help="one process each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    spec = spec_from(args)
    if args.child:
        settings = TrainSettings(batch=args.batch, seq_len=args.seq_len, compile_mode=args.mode)
        args.child_out.write_text(json.dumps(first_steps(args.child, spec, settings, device, args.inner_backend)))
        return
    meta = {**step_meta(args, spec, device), "mode": args.mode or "default"}
    rows = []
    for variant in args.variants:
        rows.append({"variant": variant, **in_fresh_process(args, variant)})
        print(f"{variant}: first step {rows[-1]['first_step_s']:.1f} s", flush=True)
    report.publish(markdown(rows, meta), args.out, args.name, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
