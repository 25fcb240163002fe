"""End-to-end accuracy of the recipes against BF16 (GPU).

Trains each built-in model once per recipe with identical initial weights, data order and
backward seed, on byte-level text (default: the Python standard library's sources), and
reports validation bits per byte and the gap to BF16. The token budget per run is
``steps x batch x seq_len``, printed and recorded with the epochs of the text it amounts to.
Results are written after every run, so a run cut short keeps what it had.

    python -m quartet_bench.studies.accuracy --models 30m --steps 600 --out bench/results
    python -m quartet_bench.studies.accuracy --models 30m --backward-seed 1,2,3   # three runs per recipe
    python -m quartet_bench.studies.accuracy --models 30m --data SITE_PACKAGES --data-mb 512 --steps 2000 --batch 64
        # the README's 65.5M-token study: a run must not repeat its text (the default corpus,
        # the standard library, is a few tens of MB; past one epoch the runs measure memorization)
    python -m quartet_bench.studies.accuracy --summarize bench/results/accuracy-seeds-30m.json   # re-render
    python -m quartet_bench.studies.accuracy --summarize a-30m.json b-30m.json --name long --out bench/results
        # one table from runs split over several device calls (same model and settings)

Expected ordering (Quartet II and 4/6 papers): bf16 < quartet2 < quartet2-no46, quartet2 < nvidia.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from .. import report
from ..arguments import add_training_arguments, corpus_from, runs_from, settings_from, spec_from
from ..training import RunResult, train

RECIPES = ["inductor", "quartet2", "quartet2-no46", "fp4-forward", "nvidia"]
EXPECTED = [("inductor", "quartet2"), ("quartet2", "quartet2-no46"), ("quartet2", "nvidia")]
"""Pairs (better, worse) in validation bpb that the papers lead us to expect."""


def seed_summary(results: list[RunResult]) -> list[str]:
    """Per recipe, the validation bpb's mean and standard deviation over its backward seeds and
    the gap of the means to BF16; then each expected pair judged on the means, with the
    difference in units of its standard error: below 2, the order is within the run-to-run
    noise. Two or three seeds give a poor standard deviation per recipe, and a recipe run once
    gives none, so the error uses the run-to-run deviation pooled over every recipe with
    repeats: it assumes the noise of a run (GPU non-determinism, backward randomness) is about
    the same for every recipe of one model and schedule."""
    finals: dict[str, list[float]] = {}
    for r in results:
        if r.val_bpb:
            finals.setdefault(r.variant, []).append(r.final_val_bpb)
    mean = {variant: statistics.fmean(values) for variant, values in finals.items()}
    lines = []
    for variant, values in finals.items():
        gap = f", {mean[variant] / mean['inductor'] - 1:+.2%} vs BF16" if "inductor" in mean else ""
        spread = f" +- {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        lines.append(f"{variant}: val bpb {mean[variant]:.4f}{spread} over {len(values)} seed(s){gap}")
    repeats = [values for values in finals.values() if len(values) > 1]
    freedom = sum(len(values) - 1 for values in repeats)
    pooled = math.sqrt(sum(statistics.variance(v) * (len(v) - 1) for v in repeats) / freedom) if freedom else 0.0
    if freedom:
        lines.append(f"run-to-run sd, pooled over recipes: {pooled:.4f} ({freedom} degrees of freedom)")
    for better, worse in EXPECTED:
        if better in mean and worse in mean:
            holds = "holds" if mean[better] < mean[worse] else "does NOT hold"
            error = pooled * math.sqrt(1 / len(finals[better]) + 1 / len(finals[worse]))
            t = f"{(mean[worse] - mean[better]) / error:+.1f} standard errors" if error else "no repeats: no error"
            lines.append(f"{better} < {worse}: {holds} ({mean[better]:.4f} vs {mean[worse]:.4f}, {t})")
    return lines


def _shared(meta: dict, key: str) -> object:
    """What must agree between result files to merge them: ``key`` of ``meta``, where the
    settings leave out the backward seed, which each run records itself (the seeds of one
    study are often split over several device calls)."""
    value = meta.get(key)
    if key == "settings" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "backward_seed"}
    return value


def summarize(paths: list[Path], out: Path | None, name: str) -> None:
    """Re-render result files; several are merged, in order, into ``out/{name}-{model}``. Runs
    split over several processes are only comparable if they trained the same model with the
    same settings on the same text and device, so anything else is refused. A merged file can
    be merged again (more seeds later): ``merged_from`` lists the files of the original runs."""
    results, meta = report.load(paths[0])
    commands, sources = [meta["command"]], meta.get("merged_from", [paths[0].name])
    for path in paths[1:]:
        more, other = report.load(path)
        for key in ("model", "settings", "device", "corpus"):
            if _shared(other, key) != _shared(meta, key):
                raise SystemExit(f"{path}: {key} {_shared(other, key)} differs from {paths[0]}'s {_shared(meta, key)}")
        results += more
        commands.append(other["command"])
        sources += other.get("merged_from", [path.name])
    if len(paths) > 1:
        if out is None:
            raise SystemExit("merging several result files needs --out (and --name)")
        meta["command"] = " ; ".join(commands)
        meta["settings"] = _shared(meta, "settings")
        meta["merged_from"] = sources
        target = out, f"{name}-{meta['model']}"
    else:
        target = paths[0].parent, paths[0].stem
    meta["notes"] = seed_summary(results)
    report.write(results, *target, meta)
    print("\n".join(meta["notes"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(
        parser,
        {
            "model": "30m",
            "batch": 16,
            "seq_len": 512,
            "steps": 600,
            "eval_every": 100,
            "lr": 1.5e-3,
            "name": "accuracy",
        },  # fmt: skip
    )
    parser.add_argument("--models", default="30m,125m")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument(
        "--summarize",
        type=Path,
        nargs="+",
        help="re-summarize result JSONs: one is rewritten in place; several are merged into --out/--name",
    )
    args = parser.parse_args()
    if args.summarize:
        summarize(args.summarize, args.out, args.name)
        return
    device = torch.device(args.device)
    corpus = corpus_from(args)
    corpus_meta = {"source": corpus.source, "train_bytes": corpus.train.numel(), "val_bytes": corpus.val.numel()}
    for model in args.models.split(","):
        args.model = model
        spec, settings = spec_from(args), settings_from(args)
        tokens = settings.steps * settings.batch * settings.seq_len
        epochs = tokens / corpus_meta["train_bytes"]
        print(f"{model}: {tokens / 1e6:.1f}M training tokens per recipe, {epochs:.2f} epochs", flush=True)
        meta = {**report.environment(device), "model": model, "settings": vars(settings), "tokens_per_run": tokens,
                "corpus": corpus_meta, "epochs": epochs}  # fmt: skip
        results: list[RunResult] = []
        for variant, run_settings in runs_from(args, args.recipes.split(",")):
            results.append(train(variant, spec, corpus, run_settings, device, {"inner_backend": args.inner_backend}))
            print(f"  {results[-1].label}: val bpb {results[-1].final_val_bpb:.4f}", flush=True)
            meta["notes"] = seed_summary(results)
            if args.out:
                report.write(results, Path(args.out), f"{args.name}-{model}", meta)
        print(report.text_table(*report.summary_rows(results)))
        print("\n".join(meta["notes"]))


if __name__ == "__main__":
    main()
