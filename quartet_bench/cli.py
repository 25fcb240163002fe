"""quartet-bench: train the same model compiled several ways, side by side in one process on
one device, and compare step time, tokens/s, compile time, peak memory, graph breaks,
recompiles and loss. Ratios are to the inductor (BF16) variant of the same run.

    quartet-bench --model 125m --variants inductor,quartet2,nvidia --steps 50
    quartet-bench --hf-config gpt2 --hf-set n_layer=4 --hf-set n_embd=512 --hf-set n_head=8 --steps 20
    quartet-bench --distributed --model 1b         # tokens/s scaling over 1..N GPUs (torchrun)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import report
from .arguments import (
    HelpFormatter,
    add_training_arguments,
    corpus_from,
    runs_from,
    settings_from,
    spec_from,
    variant_list,
)
from .training import RunResult, train
from .variants import VARIANTS, Kind

DEFAULT_VARIANTS = ["eager", "inductor", "quartet2", "quartet2-no46", "nvidia", "fp4-forward", "tensorrt"]


def _progress_bar(total: int, desc: str):
    """A bar that starts after the first step, so that the compilation in it does not enter the
    estimated time left."""
    from tqdm.auto import tqdm

    print(f"  {desc}: compiling and running the first step ...", file=sys.stderr)
    bar = None

    def update(step: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=step + 1, desc=desc, unit="step", leave=False, file=sys.stderr)
        else:
            bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if step + 1 == total:
            bar.close()

    return update


def _warm_up_compiler(device: torch.device) -> None:
    """One small Inductor compile, so that its one-time start-up costs (imports, worker pools,
    toolchain checks) do not count against the first variant's compile time."""
    torch._dynamo.reset()
    torch.compile(lambda x: (x * 2).sum())(torch.ones(8, device=device))
    torch._dynamo.reset()


def compare(args: argparse.Namespace, variant_names: Sequence[str]) -> list[RunResult]:
    """Train every variant on the same data, print the tables, write the result files."""
    device = torch.device(args.device)
    print(f"Reading text from {args.data or 'the Python standard library'} ...", file=sys.stderr)
    corpus = corpus_from(args)
    spec, settings = spec_from(args), settings_from(args)
    print(
        f"{spec.label} on {device}: {settings.steps} steps of {settings.batch}x{settings.seq_len} bytes "
        f"from {corpus.source} ({corpus.train.numel() / 1e6:.1f} MB train, {corpus.val.numel() / 1e6:.1f} MB val)",
        file=sys.stderr,
    )
    started = time.perf_counter()
    _warm_up_compiler(device)
    results = []
    for variant, run_settings in runs_from(args, variant_names):
        progress = _progress_bar(settings.steps, variant.name)
        result = train(variant, spec, corpus, run_settings, device, {"inner_backend": args.inner_backend}, progress)
        status = f"{result.median_step_ms:.1f} ms/step" if result.error is None else f"not run ({result.error})"
        print(f"  {result.label}: {status}", file=sys.stderr)
        results.append(result)
    print()
    print(report.text_table(*report.summary_rows(results)))
    print("\n".join(report.LEGEND))
    if any(r.error for r in results):
        print(report.failures(results))
    curves = report.curve_table(results)
    if curves:
        print("\nValidation bits per byte:\n" + curves)
    total_s = time.perf_counter() - started
    if args.out:
        meta = {**report.environment(device), "model": spec.label, "settings": vars(settings), "total_s": total_s}
        meta["notes"] = [f"Total time of the comparison (compilation, training, evaluation): {total_s / 60:.1f} min."]
        for path in report.write(results, args.out, args.name, meta):
            print(f"wrote {path}")
    minutes, seconds = divmod(round(total_s), 60)
    print(f"\nTotal time: {minutes} min {seconds} s", file=sys.stderr)
    return results


def _default_variants() -> list[str]:
    """All variants of the comparison; TensorRT only where it is installed."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return [v for v in DEFAULT_VARIANTS if VARIANTS[v].kind is not Kind.TENSORRT]
    return DEFAULT_VARIANTS


def main(argv: list[str] | None = None) -> None:
    """``quartet-bench`` (a console script exits with what this returns: nothing, status 0)."""
    run(argv)


def run(argv: list[str] | None = None) -> list[RunResult] | None:
    """``quartet-bench``'s work; returns the comparison's results (``None`` for --replot and
    --distributed)."""
    parser = argparse.ArgumentParser(prog="quartet-bench", description=__doc__, formatter_class=HelpFormatter)
    add_training_arguments(
        parser, {"model": "tiny", "batch": 8, "seq_len": 256, "steps": 30, "eval_every": 10, "lr": 3e-3, "name": "ab"}
    )
    parser.add_argument(
        "--variants",
        type=variant_list,
        help=f"comma-separated, from: {', '.join(VARIANTS)} (default: all that are installed)",
    )
    parser.add_argument("--distributed", action="store_true", help="tokens/s scaling from 1 to N GPUs (torchrun)")
    parser.add_argument("--parallel", choices=["none", "ddp", "fsdp2"], default="ddp", help="engine for --distributed")
    parser.add_argument("--max-ranks", type=int, help="largest world size for --distributed (default: all GPUs)")
    parser.add_argument("--compile-per-block", action="store_true", help="compile each block (FSDP2 layout)")
    parser.add_argument("--worker-json", help=argparse.SUPPRESS)
    parser.add_argument("--replot", type=Path, help="re-render the table and plot of a result JSON, then exit")
    args = parser.parse_args(argv)
    if args.replot:
        results, _ = report.load(args.replot)
        print(report.text_table(*report.summary_rows(results)))
        report.plot(results, args.replot.with_suffix(".png"), title=args.replot.stem)
        return None
    variants = args.variants or _default_variants()
    if args.worker_json:
        from .scaling import run_worker

        run_worker(args, runs_from(args, variants), spec_from(args))
        return None
    if args.distributed:
        from .scaling import scaling_study

        scaling_study(args, variants)
        return None
    return compare(args, variants)
