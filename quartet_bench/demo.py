"""The main job: train a small byte-level Llama on real text twice, BF16 and quartet (NVFP4,
Quartet II numerics), same init, same data order, and compare the loss curves.

The text is the Python standard library's sources, read at run time (--data for your own).
On a CPU this trains the tiny model through the pure-PyTorch reference numerics; on a GPU the
30m model with the Triton kernels. The defaults shown are this machine's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from quartet_compile import Recipe

from .arguments import HelpFormatter, add_training_arguments
from .cli import compare

CPU_DEFAULTS = {"model": "tiny", "batch": 8, "seq_len": 128, "steps": 120, "eval_every": 20, "lr": 3e-3}
GPU_DEFAULTS = {"model": "30m", "batch": 16, "seq_len": 512, "steps": 600, "eval_every": 50, "lr": 1.5e-3}


def _prog() -> str:
    """How this was started: ``quartet-demo`` or ``python -m quartet_compile``."""
    return "quartet-demo" if Path(sys.argv[0]).name == "quartet-demo" else "python -m quartet_compile"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=_prog(), description=__doc__, formatter_class=HelpFormatter)
    defaults = GPU_DEFAULTS if torch.cuda.is_available() else CPU_DEFAULTS
    add_training_arguments(parser, {**defaults, "name": "demo"})
    parser.add_argument(
        "--recipe",
        default=Recipe.QUARTET2.value,
        choices=[r.value for r in Recipe],
        help="the quartet recipe to compare against Inductor BF16 (bf16: the backend with nothing quantized)",
    )
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
