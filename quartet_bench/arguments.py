"""Command-line arguments shared by ``quartet-bench``, the demo and the accuracy study, and what
they build: the training settings, the runs of every variant and seed, the corpus, the model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .data import DEFAULT_MAX_MB, ByteCorpus
from .models import PRESETS, ModelSpec
from .training import TrainSettings
from .variants import VARIANTS, Variant, parse_variants


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
    """``--variants``: comma-separated names, each checked by :func:`parse_variants`."""
    names = [n for n in text.split(",") if n]
    if not names:
        raise argparse.ArgumentTypeError(f"no variant named; choose from {', '.join(VARIANTS)}")
    try:
        parse_variants(names)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return names


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str) -> None:
    """Which model to build (read back by :func:`spec_from`): a preset or a ``transformers`` config."""
    parser.add_argument("--model", default=default_model, choices=list(PRESETS), help="built-in model preset")
    parser.add_argument("--hf-config", help="a transformers model_type (llama, gpt2, qwen2...) or a config.json path")
    parser.add_argument("--hf-set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")


def add_step_arguments(parser: argparse.ArgumentParser, *, steps: int, name: str) -> None:
    """What a timed-step study measures on and where it writes: the batch shape, warm-up and
    timed steps, the device, and the result files' directory and stem."""
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default=name, help="file stem of the results")


def add_variant_arguments(parser: argparse.ArgumentParser, *, variants_help: str, mode: bool = True) -> None:
    """How a step study compiles: its variants (``--variants``), the ``torch.compile`` mode
    (``--mode``, where the study takes one) and what compiles quartet's rewritten graph."""
    parser.add_argument("--variants", type=variant_list, default="inductor,quartet2", help=variants_help)
    if mode:
        parser.add_argument("--mode", help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--inner-backend", default="inductor", help="what compiles quartet's rewritten graph")


def add_training_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """Arguments shared by ``quartet-bench`` and the demo (which only changes their defaults)."""
    add_model_arguments(parser, defaults["model"])
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
