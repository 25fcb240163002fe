"""End-to-end accuracy of the recipes against BF16 (issue 5, GPU).

Trains each built-in model once per recipe with identical initial weights, data order and
backward seed, on the Python standard library's sources (byte-level), and reports validation
bits per byte and the gap to BF16. The token budget per run is ``steps x batch x seq_len``,
printed and recorded. Results are written after every run, so a run cut short keeps what it had.

    python bench/accuracy.py --models 30m --steps 600 --out bench/results
    python bench/accuracy.py --models 30m --backward-seed 1,2,3   # three runs per recipe
    python bench/accuracy.py --summarize bench/results/accuracy-seeds-30m.json   # re-render

Expected ordering (Quartet II and 4/6 papers): bf16 < quartet2 < quartet2-no46, quartet2 < nvidia.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from quartet_compile.bench import report
from quartet_compile.bench.cli import add_training_arguments, runs_from, settings_from, spec_from
from quartet_compile.data import ByteCorpus
from quartet_compile.training import RunResult, train

RECIPES = ["inductor", "quartet2", "quartet2-no46", "fp4-forward", "nvidia"]
EXPECTED = [("inductor", "quartet2"), ("quartet2", "quartet2-no46"), ("quartet2", "nvidia")]
"""Pairs (better, worse) in validation bpb that the papers lead us to expect."""


def seed_summary(results: list[RunResult]) -> list[str]:
    """Per recipe, the validation bpb's mean and standard deviation over its backward seeds and
    the gap of the means to BF16; then each expected pair judged on the means, with the
    difference in units of its standard error (Welch, over seeds): below 2, the order is within
    the seed-to-seed noise."""
    finals: dict[str, list[float]] = {}
    for r in results:
        if r.val_bpb:
            finals.setdefault(r.variant, []).append(r.final_val_bpb)
    mean = {variant: statistics.fmean(values) for variant, values in finals.items()}
    sd = {variant: statistics.stdev(values) if len(values) > 1 else 0.0 for variant, values in finals.items()}
    lines = []
    for variant, values in finals.items():
        gap = f", {mean[variant] / mean['inductor'] - 1:+.2%} vs BF16" if "inductor" in mean else ""
        lines.append(f"{variant}: val bpb {mean[variant]:.4f} +- {sd[variant]:.4f} over {len(values)} seeds{gap}")
    for better, worse in EXPECTED:
        if better in mean and worse in mean:
            holds = "holds" if mean[better] < mean[worse] else "does NOT hold"
            error = math.sqrt(sum(sd[v] ** 2 / len(finals[v]) for v in (better, worse)))
            t = f"{(mean[worse] - mean[better]) / error:+.1f} standard errors" if error else "one seed each"
            lines.append(f"{better} < {worse}: {holds} ({mean[better]:.4f} vs {mean[worse]:.4f}, {t})")
    return lines


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
    parser.add_argument("--summarize", type=Path, help="re-summarize a result JSON, rewrite its files")
    args = parser.parse_args()
    if args.summarize:
        results, meta = report.load(args.summarize)
        meta["notes"] = seed_summary(results)
        report.write(results, args.summarize.parent, args.summarize.stem, meta)
        print("\n".join(meta["notes"]))
        return
    device = torch.device(args.device)
    corpus = ByteCorpus.load(args.data)
    for model in args.models.split(","):
        args.model = model
        spec, settings = spec_from(args), settings_from(args)
        tokens = settings.steps * settings.batch * settings.seq_len
        print(f"{model}: {tokens / 1e6:.1f}M training tokens per recipe", flush=True)
        meta = {**report.environment(device), "model": model, "settings": vars(settings), "tokens_per_run": tokens}
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
