"""The main job: train a small byte-level Llama on real text twice, BF16 and ``quartet``
(NVFP4, Quartet II numerics), same init, same data order, and compare the loss curves.

The text is the Python standard library's sources, read at run time (``--data`` for your own).
On a CPU this trains the ``tiny`` model for a few minutes (the CPU path runs the pure-PyTorch
reference numerics); on a GPU the ``30m`` model with the Triton kernels.
"""

from __future__ import annotations

import argparse

import torch

from .bench.cli import add_training_arguments, compare

CPU_DEFAULTS = {"model": "tiny", "batch": 8, "seq_len": 128, "steps": 120, "eval_every": 20, "lr": 3e-3}
GPU_DEFAULTS = {"model": "30m", "batch": 16, "seq_len": 512, "steps": 600, "eval_every": 50, "lr": 1.5e-3}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quartet_compile", description=__doc__)
    defaults = GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
    add_training_arguments(parser, {**defaults, "name": "demo"})
    parser.add_argument("--recipe", default="quartet2", help="quartet recipe to compare against BF16")
    args = parser.parse_args(argv)
    results = compare(args, ["inductor", args.recipe])
    base, quartet = results
    if quartet.val_bpb and base.val_bpb:
        gap = 100 * (quartet.final_val_bpb / base.final_val_bpb - 1)
        print(
            f"\n{args.recipe} reaches {quartet.final_val_bpb:.4f} bits/byte vs {base.final_val_bpb:.4f} in BF16 "
            f"({gap:+.2f}%), at {quartet.median_step_ms / base.median_step_ms:.2f}x the BF16 step time."
        )


if __name__ == "__main__":
    main()
