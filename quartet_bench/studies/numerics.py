"""Quantization error and bias of the reference NVFP4 quantizers on synthetic data.

For each distribution and quantizer: relative MSE (mean over 128-element groups of
||deq - x||^2 / ||x||^2, the Quartet II paper's metric), magnitude misalignment
(1 - mean <x, deq> / <x, x>), and a bias ratio: ||mean over S draws - x||^2 divided by what an
unbiased quantizer would leave (MSE / S); about 1 when unbiased, growing with S when biased
(a deterministic quantizer's error is all bias). MS-EDEN's estimate is rotated back with
the inverse RHT before it is compared with x.

    python -m quartet_bench.studies.numerics            # writes bench/results/numerics.{md,json}
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from quartet_compile.nvfp4.numerics import MS_EDEN_SCALE_OVERRIDE
from quartet_compile.reference import (
    inverse_rht,
    quantize_four_over_six,
    quantize_ms_eden,
    quantize_rtn,
    quantize_sr,
    random_signs,
    rht,
)

try:
    from tqdm import tqdm
except ImportError:  # the progress bar comes with the `bench` extra; the numbers do not need it

    def tqdm(iterable, **_):
        return iterable


RESULTS = Path(__file__).parent / "results"

# Quartet II paper, notebooks/unbiasedness.ipynb (E4M3 scales, groups of 16, row-scaled
# Gaussian data, RHT-128): MSE x 1e3 and magnitude misalignment.
PAPER = {"rht+rtn": (9.0, 0.00792), "sr": (23.5, 0.0), "ms-eden": (9.8, 0.00056)}


def distributions(rows: int, gen: torch.Generator) -> dict[str, Tensor]:
    shape = (rows, 128)
    return {
        "gaussian": torch.randn(shape, generator=gen),
        "laplace": torch.distributions.Laplace(0.0, 1.0).sample(shape),
        "student-t(3)": torch.distributions.StudentT(3.0).sample(shape),
        # The paper's setting: Gaussian rows whose scale sweeps 2^0 .. 2^8.
        "row-scaled gaussian": torch.randn(shape, generator=gen) * torch.logspace(0, 8, rows, base=2).unsqueeze(1),
    }


Quantizer = Callable[[Tensor, torch.Generator], Tensor]


def _ms_eden(x: Tensor, gen: torch.Generator) -> Tensor:
    signs = random_signs(128, gen, x.device)
    return inverse_rht(quantize_ms_eden(x, signs, source=gen).dequantize(), signs)


def _rotated_rtn(x: Tensor, gen: torch.Generator) -> Tensor:
    """The paper's biased baseline ("NO" row): RHT-128 then RTN with its 0.93 scale override."""
    signs = random_signs(128, gen, x.device)
    return inverse_rht(quantize_rtn(rht(x, signs), scale_override=MS_EDEN_SCALE_OVERRIDE).dequantize(), signs)


QUANTIZERS: dict[str, tuple[Quantizer, bool]] = {
    "rtn": (lambda x, gen: quantize_rtn(x).dequantize(), False),
    "4/6": (lambda x, gen: quantize_four_over_six(x).dequantize(), False),
    "sr": (lambda x, gen: quantize_sr(x, source=gen).dequantize(), True),
    "rht+rtn": (_rotated_rtn, True),
    "ms-eden": (_ms_eden, True),
}


def measure(x: Tensor, quantizer: Quantizer, stochastic: bool, draws: int, seed: int) -> dict[str, float | None]:
    """``seed`` must differ from the one that drew ``x``: a generator seeded alike replays the
    same random bits, which correlates the rounding decisions with the data."""
    gen = torch.Generator().manual_seed(seed)
    x64 = x.double()
    energy = x64.square().sum(-1)
    mse, alignment, mean_deq = [], [], torch.zeros_like(x64)
    n = draws if stochastic else 1
    for _ in range(n):
        deq = quantizer(x, gen).double()
        mse.append(float(((deq - x64).square().sum(-1) / energy).mean()))
        alignment.append(float(((deq * x64).sum(-1) / energy).mean()))
        mean_deq += deq
    mean_mse = sum(mse) / n
    residual = float(((mean_deq / n - x64).square().sum(-1) / energy).mean())
    return {
        "rel_mse": mean_mse,
        "misalignment": 1.0 - sum(alignment) / n,
        "bias_ratio": residual / (mean_mse / n) if stochastic else None,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8192, help="128-element rows per distribution")
    parser.add_argument("--draws", type=int, default=32, help="seeds averaged for the stochastic quantizers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    started = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    data = distributions(args.rows, gen)
    rows = []
    for dist, x in tqdm(data.items(), desc="distributions"):
        for name, (quantizer, stochastic) in QUANTIZERS.items():
            stats = measure(x, quantizer, stochastic, args.draws, seed=args.seed + 1)
            rows.append({"distribution": dist, "quantizer": name, **stats})

    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": "cpu",
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "rows": args.rows,
        "draws": args.draws,
        "seconds": round(time.time() - started, 1),
        "paper_row_scaled_gaussian": {k: {"rel_mse_x1e3": v[0], "misalignment": v[1]} for k, v in PAPER.items()},
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "numerics.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(rows, args)
    (args.out / "numerics.md").write_text(table)
    print(table)
    return result


def render(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Reference NVFP4 quantizers, {args.rows} x 128 values per distribution, "
        f"{args.draws} draws for stochastic quantizers (`python -m quartet_bench.studies.numerics`).",
        "",
        "Misalignment is 1 - E<x, deq>/<x, x>: the shrinkage an estimator adds to every product. "
        "`rht+rtn` is the paper's biased baseline (random rotation, RTN, 0.93 scale override); "
        "the paper's figures come from its notebooks/unbiasedness.ipynb.",
        "",
        "| distribution | quantizer | rel. MSE x1e3 | misalignment | bias ratio (1 = unbiased) "
        "| paper MSE x1e3 / misalign. |",
        "|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        paper = PAPER.get(r["quantizer"]) if r["distribution"] == "row-scaled gaussian" else None
        ref = f"{paper[0]:.1f} / {paper[1]:.5f}" if paper else ""
        lines.append(
            f"| {r['distribution']} | {r['quantizer']} | {r['rel_mse'] * 1e3:.2f} | {r['misalignment']:+.5f} "
            f"| {'deterministic' if r['bias_ratio'] is None else format(r['bias_ratio'], '.2f')} | {ref} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
