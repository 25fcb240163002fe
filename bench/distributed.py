"""Do DDP and FSDP2 runs of ``backend="quartet"`` train like one GPU? (issue 6)

Trains the built-in model with the quartet2 recipe on the same global batch and data order:
- ``single``: one GPU (autocast bf16), and ``single, seed 2``: the same run with another backward
  seed. Their difference is the run-to-run noise of the stochastic backward;
- ``ddp``: N ranks, DDP (autocast bf16);
- ``fsdp2``: N ranks, FSDP2 with bf16 parameters (whole-model compile), compared with
  ``fsdp2 x1`` (FSDP2 on one GPU: the same mixed-precision policy); ``fsdp2 per-block``: N ranks,
  each block compiled separately.

Bound: over the second half of training, the mean |loss difference| per step between a
distributed run and its one-GPU reference must be at most 2x the same statistic between the two
one-GPU runs that differ only in their backward seed (``--noise-factor``). Every rank has its own
backward seed and its own activation scales, so a distributed run is "another seed" of the
one-GPU run, not a bit-identical copy (the bit-identical case, same data and seeds on every rank,
is ``tests/test_distributed.py``).

    python bench/distributed.py --ranks 2 --out bench/results
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from quartet_compile.bench import report
from quartet_compile.bench.scaling import launch
from quartet_compile.training import RunResult


def mean_abs_diff(a: list[float], b: list[float]) -> float:
    """Mean |a - b| over the second half of the steps (past the warm-up transient)."""
    half = len(a) // 2
    pairs = list(zip(a[half:], b[half:], strict=True))
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="30m")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--noise-factor", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    common = ["--model", args.model, "--batch", args.global_batch, "--seq-len", args.seq_len, "--steps", args.steps,
              "--lr", args.lr, "--eval-every", max(1, args.steps // 6), "--device", args.device,
              "--variants", "quartet2"]  # fmt: skip
    plan = {
        "single": (1, ["--parallel", "none"]),
        "single, seed 2": (1, ["--parallel", "none", "--backward-seed", "2"]),
        "ddp": (args.ranks, ["--parallel", "ddp"]),
        "fsdp2 x1": (1, ["--parallel", "fsdp2"]),
        "fsdp2": (args.ranks, ["--parallel", "fsdp2"]),
        "fsdp2 per-block": (args.ranks, ["--parallel", "fsdp2", "--compile-per-block"]),
    }
    runs: dict[str, RunResult] = {}
    for name, (ranks, extra) in plan.items():
        (runs[name],) = launch(ranks, [str(a) for a in common + extra])
        runs[name].variant = name

    noise = mean_abs_diff(runs["single"].losses, runs["single, seed 2"].losses)
    bound = args.noise_factor * noise
    references = {"single, seed 2": "single", "ddp": "single", "fsdp2": "fsdp2 x1", "fsdp2 per-block": "fsdp2 x1"}
    header = ["run", "ranks", "reference", "mean |dloss|", "bound", "within", "final loss", "val bpb", "step ms"]
    rows, verdicts = [], {}
    for name, result in runs.items():
        ref = references.get(name)
        diff = mean_abs_diff(result.losses, runs[ref].losses) if ref else None
        verdicts[name] = None if diff is None or name == "single, seed 2" else diff <= bound
        verdict = {None: "-", True: "yes", False: "NO"}[verdicts[name]]
        rows.append([name, str(plan[name][0]), ref or "-", "-" if diff is None else f"{diff:.4f}",
                     f"{bound:.4f}" if ref else "-", verdict, f"{result.final_loss:.4f}",
                     f"{result.final_val_bpb:.4f}", f"{result.median_step_ms:.1f}"])  # fmt: skip
    print(report.text_table(header, rows))
    if args.out:
        meta = {**report.environment(torch.device(args.device)), "noise": noise, "bound": bound,
                "verdicts": verdicts, "settings": vars(args) | {"out": str(args.out)}}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "distributed.json").write_text(
            json.dumps({**meta, "results": [r.to_json() for r in runs.values()]}, indent=1)
        )
        md = [*report.markdown_header("DDP / FSDP2 vs one GPU (quartet2)", meta),
              f"Bound: {args.noise_factor} x {noise:.4f} (one-GPU seed-to-seed mean |dloss| over the second half)",
              "", report.markdown_table(header, rows)]  # fmt: skip
        (args.out / "distributed.md").write_text("\n".join(md) + "\n")
        report.plot(list(runs.values()), args.out / "distributed.png", title="quartet2: DDP / FSDP2 vs one GPU")


if __name__ == "__main__":
    main()
