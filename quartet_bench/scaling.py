"""``quartet-bench --distributed``: tokens/s of each variant on 1, 2, 4 ... N ranks (weak scaling:
the per-rank batch stays ``--batch``), each world size a ``torchrun`` launch of ``quartet-bench``
itself in worker mode (``--worker-json``)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import parallel, report
from .arguments import corpus_from
from .models import ModelSpec
from .training import RunResult, TrainSettings, train
from .variants import Variant


def world_sizes(limit: int) -> list[int]:
    sizes, n = [], 1
    while n < limit:
        sizes.append(n)
        n *= 2
    return sizes + [limit]


def launch(ranks: int, argv: Sequence[str]) -> list[RunResult]:
    """Run ``quartet-bench`` in worker mode on ``ranks`` processes (``torchrun``) and read back
    rank 0's results."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                   "-m", "quartet_bench", *argv, "--worker-json", str(out)]  # fmt: skip
        print(f"{ranks} rank(s): {' '.join(command[1:])}", file=sys.stderr)
        subprocess.run(command, check=True)
        return [RunResult.from_json(r) for r in json.loads(out.read_text())]


def worker_argv(args: argparse.Namespace, variants: Sequence[str], ranks: int) -> list[str]:
    """The worker command line for ``ranks`` processes: each keeps the per-rank batch of ``args``."""
    argv = [
        "--model", args.model, "--batch", str(args.batch * ranks), "--seq-len", str(args.seq_len),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--eval-every", str(args.steps + 1),
        "--lr", str(args.lr), "--seed", str(args.seed), "--device", args.device, "--parallel", args.parallel,
        "--inner-backend", args.inner_backend, "--data-mb", str(args.data_mb),
        "--variants", ",".join(variants),
    ]  # fmt: skip
    for flag, value in (
        ("--hf-config", args.hf_config),
        ("--data", args.data),
        ("--backward-seed", ",".join(map(str, args.backward_seed)) if args.backward_seed else None),
    ):
        if value is not None:
            argv += [flag, value]
    if args.mode:
        argv += ["--mode", args.mode]
    for item in args.hf_set:
        argv += ["--hf-set", item]
    return [str(a) for a in argv] + (["--compile-per-block"] if args.compile_per_block else [])


def run_worker(args: argparse.Namespace, runs: Sequence[tuple[Variant, TrainSettings]], spec: ModelSpec) -> None:
    """One rank of a ``torchrun`` launch: train every run, rank 0 writes the results."""
    device = parallel.setup(args.device)
    corpus = corpus_from(args)
    options = {"inner_backend": args.inner_backend}
    results = [train(variant, spec, corpus, settings, device, options) for variant, settings in runs]
    if parallel.world()[0] == 0:
        Path(args.worker_json).write_text(json.dumps([r.to_json() for r in results]))
    parallel.teardown()


def scaling_study(args: argparse.Namespace, variants: Sequence[str]) -> list[dict[str, Any]]:
    """Launch every world size, print the scaling table, write ``{name}-scaling.{json,md}``."""
    available = torch.cuda.device_count() if args.device.startswith("cuda") else 2
    limit = args.max_ranks or available
    if args.device.startswith("cuda") and limit > available:
        raise SystemExit(f"--max-ranks {limit} but only {available} GPUs are visible")
    rows: list[dict[str, Any]] = []
    for ranks in world_sizes(limit):
        for result in launch(ranks, worker_argv(args, variants, ranks)):
            rows.append({"variant": result.label, "ranks": ranks, "step_ms": result.median_step_ms,
                         "tokens_per_s": result.tokens_per_s, "error": result.error})  # fmt: skip
    header, cells = scaling_table(rows)
    print(report.text_table(header, cells))
    if args.out:
        device = torch.device(args.device)
        meta = {**report.environment(device), "parallel": args.parallel, "per_rank_batch": args.batch,
                "seq_len": args.seq_len, "model": args.hf_config or args.model}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.name}-scaling.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
        md = [
            *report.markdown_header(f"{args.name}: {args.parallel} scaling", meta),
            report.markdown_table(header, cells),
        ]
        (args.out / f"{args.name}-scaling.md").write_text("\n".join(md) + "\n")
    return rows


def scaling_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """tokens/s per variant and world size, speed-up over one rank and efficiency (speed-up / ranks)."""
    single = {r["variant"]: r["tokens_per_s"] for r in rows if r["ranks"] == 1 and not r["error"]}
    header = ["variant", "ranks", "step ms", "tokens/s", "speed-up", "efficiency"]
    cells = []
    for r in rows:
        if r["error"]:
            cells.append([r["variant"], str(r["ranks"]), "not run", "-", "-", "-"])
            continue
        speedup = r["tokens_per_s"] / single[r["variant"]] if r["variant"] in single else float("nan")
        cells.append([r["variant"], str(r["ranks"]), f"{r['step_ms']:.1f}", f"{r['tokens_per_s']:,.0f}",
                      f"{speedup:.2f}", f"{100 * speedup / r['ranks']:.0f}%"])  # fmt: skip
    return header, cells
