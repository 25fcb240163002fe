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
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..data import DEFAULT_MAX_MB, ByteCorpus
from ..models import PRESETS
from ..training import VARIANTS, Kind, ModelSpec, RunResult, TrainSettings, Variant, parse_variants, train
from . import report

DEFAULT_VARIANTS = ["eager", "inductor", "quartet2", "quartet2-no46", "nvidia", "fp4-forward", "tensorrt"]


def _hf_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _hf_overrides(items: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--hf-set expects key=value, got {item!r}")
        pairs.append((key, _hf_value(value)))
    return tuple(pairs)


def _seed_list(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` with every default, and the description's examples kept as written."""


def variant_list(text: str) -> list[str]:
    """``--variants``: comma-separated names, each checked against :data:`VARIANTS`."""
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return names


def add_training_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Arguments shared by ``quartet-bench`` and the demo (which only changes their defaults)."""
    parser.add_argument("--model", default=defaults["model"], choices=list(PRESETS), help="built-in model preset")
    parser.add_argument("--hf-config", help="a transformers model_type (llama, gpt2, qwen2...) or a config.json path")
    parser.add_argument("--hf-set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    parser.add_argument("--data", help="text file or directory (default: the Python standard library's sources)")
    parser.add_argument(
        "--data-mb",
        type=int,
        default=DEFAULT_MAX_MB,
        help="read at most this many MB of --data (a run of more tokens than the training bytes repeats them)",
    )
    parser.add_argument("--batch", type=int, default=defaults["batch"], help="sequences per step")
    parser.add_argument("--seq-len", type=int, default=defaults["seq_len"], help="bytes per sequence")
    parser.add_argument("--steps", type=int, default=defaults["steps"], help="training steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--eval-every", type=int, default=defaults["eval_every"], help="steps between validations")
    parser.add_argument("--eval-batches", type=int, default=8, help="validation batches")
    parser.add_argument("--lr", type=float, default=defaults["lr"], help="peak learning rate (cosine schedule)")
    parser.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    parser.add_argument(
        "--backward-seed",
        type=_seed_list,
        help="backward randomness (default: seed + 1); a comma list trains every variant once per seed",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--out", type=Path, help="directory for the JSON, markdown and PNG results")
    parser.add_argument(
        "--mode",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of every compiled variant (reduce-overhead: CUDA graphs)",
    )
    parser.add_argument(
        "--inner-backend",
        default="inductor",
        choices=["inductor", "aot_eager", "eager"],
        help="what compiles quartet's rewritten graph (aot_eager: debugging)",
    )
    parser.add_argument("--name", default=defaults["name"], help="file stem of the results")


def settings_from(args: argparse.Namespace) -> TrainSettings:
    return TrainSettings(
        batch=args.batch,
        seq_len=args.seq_len,
        steps=args.steps,
        warmup_steps=min(args.warmup, max(0, args.steps - 1)),
        lr=args.lr,
        eval_every=args.eval_every,
        eval_batches=args.eval_batches,
        seed=args.seed,
        backward_seed=args.backward_seed[0] if args.backward_seed else None,
        parallel=args.parallel if getattr(args, "worker_json", None) else "none",
        compile_per_block=getattr(args, "compile_per_block", False),
        compile_mode=args.mode,
    )


def runs_from(args: argparse.Namespace, variant_names: Sequence[str]) -> list[tuple[Variant, TrainSettings]]:
    """Every variant with every backward seed of ``--backward-seed``: the repeats that measure
    run-to-run noise share initial weights and data order and differ in the backward only."""
    base = settings_from(args)
    seeds = args.backward_seed or [None]
    return [(v, replace(base, backward_seed=s)) for v in parse_variants(list(variant_names)) for s in seeds]


def corpus_from(args: argparse.Namespace) -> ByteCorpus:
    return ByteCorpus.load(args.data, max_bytes=args.data_mb << 20)


def spec_from(args: argparse.Namespace) -> ModelSpec:
    return ModelSpec(args.model, args.hf_config, _hf_overrides(args.hf_set))


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
    if args.out:
        meta = {**report.environment(device), "model": spec.label, "settings": vars(settings)}
        for path in report.write(results, args.out, args.name, meta):
            print(f"wrote {path}")
    minutes, seconds = divmod(round(time.perf_counter() - started), 60)
    print(f"\nTotal time: {minutes} min {seconds} s", file=sys.stderr)
    return results


def _default_variants() -> list[str]:
    """All variants of the comparison; TensorRT only where it is installed."""
    if importlib.util.find_spec("torch_tensorrt") is None:
        return [v for v in DEFAULT_VARIANTS if VARIANTS[v].kind is not Kind.TENSORRT]
    return DEFAULT_VARIANTS


def main(argv: list[str] | None = None) -> list[RunResult] | None:
    """``quartet-bench``; returns the comparison's results (``None`` for --replot and --distributed)."""
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
