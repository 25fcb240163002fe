"""Do DDP and FSDP2 runs of ``backend="quartet"`` train like one GPU?

Trains the built-in model with the quartet2 recipe on the same global batch, initial weights and
data order, once per backward seed (``--seeds``), in five arms:
- ``single``: one GPU, autocast bf16; the reference of ``ddp``;
- ``ddp``: N ranks, DDP, autocast bf16;
- ``fsdp2 x1``: FSDP2 on one GPU (bf16 parameters, FSDP2's mixed-precision policy); the reference
  of the two FSDP2 arms;
- ``fsdp2``: N ranks, whole-model compile; ``fsdp2 per-block``: N ranks, each block compiled.

Bound (``quartet_bench.agreement``): an arm's mean |loss difference| per step over the
second half of training, to the reference's runs of the other seeds, must be at most
``--noise-factor`` times the same statistic between the reference's own runs of different
seeds. Every rank has its own backward seed and its own activation and gradient scales, so a
distributed run is "another seed" of the one-GPU run, not a bit-identical copy (the
bit-identical case, same data and seeds on every rank, is ``tests/test_distributed.py``).

    python -m quartet_bench.studies.distributed --ranks 2 --seeds 1,2,3 --out bench/results

Options not listed here go to every ``quartet-bench`` launch (e.g. ``--inner-backend aot_eager``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import fmean

import torch

from .. import report
from ..agreement import Agreement, agreement
from ..scaling import launch
from ..training import RunResult

REFERENCES = {"ddp": "single", "fsdp2": "fsdp2 x1", "fsdp2 per-block": "fsdp2 x1"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="30m")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seeds", default="1,2,3", help="backward seeds: every arm runs once per seed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--noise-factor", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--resume", action="store_true", help="keep the arms already in --out/distributed.json")
    args, passed_on = parser.parse_known_args()

    common = ["--model", args.model, "--batch", args.global_batch, "--seq-len", args.seq_len, "--steps", args.steps,
              "--lr", args.lr, "--eval-every", max(1, args.steps // 6), "--device", args.device,
              "--variants", "quartet2", "--backward-seed", args.seeds, *passed_on]  # fmt: skip
    plan = {
        "single": (1, ["--parallel", "none"]),
        "ddp": (args.ranks, ["--parallel", "ddp"]),
        "fsdp2 x1": (1, ["--parallel", "fsdp2"]),
        "fsdp2": (args.ranks, ["--parallel", "fsdp2"]),
        "fsdp2 per-block": (args.ranks, ["--parallel", "fsdp2", "--compile-per-block"]),
    }
    runs: dict[str, list[RunResult]] = {}
    if args.resume and args.out and (args.out / "distributed.json").exists():
        saved, _ = report.load(args.out / "distributed.json")
        for result in saved:
            runs.setdefault(result.variant, []).append(result)
    for arm, (ranks, extra) in plan.items():
        if arm in runs:
            continue
        runs[arm] = launch(ranks, [str(a) for a in common + extra])
        for result in runs[arm]:
            result.variant = arm
        write(args, runs, plan)  # a launch cut short by a time limit keeps the arms before it
    print(write(args, runs, plan))


def write(args: argparse.Namespace, runs: dict[str, list[RunResult]], plan: dict[str, tuple[int, list[str]]]) -> str:
    """Write the result files of the arms run so far; return the table."""

    def curves(arm: str) -> dict[int, list[float]]:
        return {r.backward_seed: r.losses for r in runs[arm]}

    verdicts: dict[str, Agreement] = {
        arm: agreement(curves(arm), curves(ref), args.noise_factor)
        for arm, ref in REFERENCES.items()
        if arm in runs and ref in runs
    }
    header = ["arm", "ranks", "reference", "mean |dloss|", "noise", "bound", "within", "offset", "ref sd",
              "final loss", "val bpb", "step ms"]  # fmt: skip
    rows = []
    for arm, results in runs.items():
        v = verdicts.get(arm)
        stats = ["-"] * 6 if v is None else [
            f"{v.distance:.4f}", f"{v.noise:.4f}", f"{v.bound:.4f}", "yes" if v.within else "NO",
            f"{v.offset:+.4f}", f"{v.offset_sd:.4f}",
        ]  # fmt: skip
        rows.append([arm, str(plan[arm][0]), REFERENCES.get(arm, "-"), *stats,
                     f"{fmean(r.final_loss for r in results):.4f}", f"{fmean(r.final_val_bpb for r in results):.4f}",
                     f"{fmean(r.median_step_ms for r in results):.1f}"])  # fmt: skip
    if args.out:
        meta = {**report.environment(torch.device(args.device)),
                "verdicts": {arm: {**vars(v), "within": v.within} for arm, v in verdicts.items()},
                "settings": vars(args) | {"out": str(args.out)}}  # fmt: skip
        every = [r for results in runs.values() for r in results]
        payload = {**meta, "results": [r.to_json() for r in every]}
        md = [*report.markdown_header("DDP / FSDP2 vs one GPU (quartet2)", meta),
              f"Backward seeds {args.seeds} per arm. mean |dloss|: mean |loss difference| per step over the second "
              "half, averaged over pairs (arm seed i, reference seed j != i); noise: the same between the "
              f"reference's own seeds; bound: {args.noise_factor} x noise. offset: tail loss of the arm minus the "
              "reference's (means over seeds); ref sd: seed-to-seed sd of the reference's tail loss. Final loss, "
              "val bpb and step ms are means over seeds.",
              "", report.markdown_table(header, rows)]  # fmt: skip
        report.write_result(args.out, "distributed", payload, "\n".join(md) + "\n")
        report.plot(every, args.out / "distributed.png", title="quartet2: DDP / FSDP2 vs one GPU")
    return report.text_table(header, rows)


if __name__ == "__main__":
    main()
