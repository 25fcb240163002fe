"""Every recipe's linear layer on CUDA: the Triton kernels against the pure-PyTorch reference
(``kernel_preference="reference"``), and against BF16, in one process; and the ``nvidia``
recipe's quantizers against copy bandwidth.

    python -m quartet_bench.studies.recipes [--tokens 16384 --features 4096] [--out bench/results]

Times are medians of ``triton.testing.do_bench`` (CUDA events) of one forward+backward through
the ``quartet::linear`` op. Kernel device times come from the profiler
(``quantizer_breakdown.kernel_times_us``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from quartet_compile import QuartetConfig, linear
from quartet_compile.kernels.configs import config, override
from quartet_compile.kernels.nvidia import nvidia_quantize
from quartet_compile.kernels.quantize import quantize
from quartet_compile.kernels.rotation import rotation_matrix
from quartet_compile.nvfp4.randomness import random_signs

from .. import report
from .common import copy_bandwidth, layer_step, median_ms
from .quantizer_breakdown import kernel_times_us

RECIPES = ("quartet2", "quartet2-no46", "nvidia", "fp4-forward")


def layer_rows(tokens: int, features: int) -> list[dict]:
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(features, features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    bf16 = layer_step(F.linear, x, w, g)
    bf16_ms = median_ms(bf16)
    rows = [{"recipe": "bf16 (F.linear)", "kernels_ms": bf16_ms, "reference_ms": None}]
    for recipe in RECIPES:
        kernels, reference = (QuartetConfig(recipe=recipe, kernel_preference=p) for p in ("triton", "reference"))
        step = layer_step(lambda x, w, c=kernels: linear(x, w, config=c), x, w, g)
        row = {"recipe": recipe, "kernels_ms": median_ms(step)}
        launches = kernel_times_us(step)
        row["kernel_device_ms"], row["launches"] = sum(us for _, us in launches) / 1e3, len(launches)
        row["kernels_us"] = launches
        row["reference_ms"] = median_ms(layer_step(lambda x, w, c=reference: linear(x, w, config=c), x, w, g))
        rows.append(row)
        print(row["recipe"], f"{row['kernels_ms']:.3f} ms, reference {row['reference_ms']:.3f} ms", flush=True)
    for row in rows:
        row["vs_bf16"] = row["kernels_ms"] / bf16_ms
        row["reference_vs_kernels"] = None if row["reference_ms"] is None else row["reference_ms"] / row["kernels_ms"]
    return rows


def _quantizer_cases(x: torch.Tensor) -> list[tuple[str, Callable[[], object], int]]:
    """(name, call, bytes written) of each nvidia-recipe quantizer on ``x``."""
    n = x.numel()
    rotation = rotation_matrix(random_signs(16, None, torch.device("cuda")))
    seed = torch.randint(0, 2**62, (), device="cuda")
    operand = {"codes": False, "unscaled_bf16": True}
    return [
        ("16x16-tile RTN (weights): codes + bf16 operand", lambda: quantize(x, tile_2d=True, unscaled_bf16=True),
         n // 2 + n // 16 + 2 * n),
        ("SR of g along N: bf16 operand", lambda: nvidia_quantize(x, seed=seed, **operand), 2 * n),
        ("RHT-16 + SR of g^T along T (strided read): bf16 operand",
         lambda: nvidia_quantize(x, seed=seed, rotation=rotation, transpose=True, **operand), 2 * n),
        ("RHT-16 + RTN of x^T along T (strided read): bf16 operand",
         lambda: nvidia_quantize(x, seed=None, rotation=rotation, transpose=True, **operand), 2 * n),
    ]  # fmt: skip


def quantizer_rows(tokens: int, features: int, copy_gbs: float) -> list[dict]:
    """Bytes counted as in :mod:`.kernels`: the input read once, each output written once."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    n = x.numel()
    rows = []
    for name, fn, out_bytes in _quantizer_cases(x):
        ms = median_ms(fn)
        gbs = (2 * n + out_bytes) / ms / 1e6
        rows.append({"quantizer": name, "ms": ms, "GB/s": gbs, "of_copy": gbs / copy_gbs})
    return rows


TUNE_CANDIDATES = [(32, 128, 4), (16, 128, 4), (64, 128, 4), (32, 64, 4), (16, 256, 4), (32, 128, 8), (64, 64, 4)]
"""(BLOCK_R, BLOCK_C, num_warps) of the ``nvidia`` kernel timed by ``--tune``."""


def tune_rows(tokens: int, features: int) -> list[dict]:
    """Each nvidia-recipe SR/RHT-16 quantizer under each candidate tile."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    rows = []
    for name, fn, _ in _quantizer_cases(x)[1:]:
        for block_r, block_c, warps in TUNE_CANDIDATES:
            values = {"BLOCK_R": block_r, "BLOCK_C": block_c, "num_warps": warps}
            with override("nvidia", values):
                rows.append({"quantizer": name, "config": values, "ms": median_ms(fn)})
            print(rows[-1], flush=True)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--tune", action="store_true", help="also time tiles of the nvidia quantizer kernel")
    args = parser.parse_args()
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth()
    tuning = tune_rows(args.tokens, args.features) if args.tune else []
    layers = layer_rows(args.tokens, args.features)
    quantizers = quantizer_rows(args.tokens, args.features, copy_gbs)
    layer_header = [
        "recipe",
        "kernels ms",
        "vs bf16",
        "kernel device ms (launches)",
        "reference ms",
        "reference / kernels",
    ]
    layer_cells = [
        [
            r["recipe"],
            f"{r['kernels_ms']:.3f}",
            f"{r['vs_bf16']:.2f}",
            f"{r['kernel_device_ms']:.3f} ({r['launches']})" if "launches" in r else "",
            _fmt(r["reference_ms"], ".3f"),
            _fmt(r["reference_vs_kernels"], ".1f"),
        ]
        for r in layers
    ]
    quantizer_header = ["nvidia-recipe quantizer", "ms", "GB/s", "of copy"]
    quantizer_cells = [
        [r["quantizer"], f"{r['ms']:.3f}", f"{r['GB/s']:.0f}", f"{r['of_copy']:.0%}"] for r in quantizers
    ]
    print(report.text_table(layer_header, layer_cells))
    print(report.text_table(quantizer_header, quantizer_cells))
    if args.out:
        meta = {**report.environment(torch.device("cuda")), "T": args.tokens, "K": args.features, "N": args.features}
        payload = {**meta, "copy_GBps": copy_gbs, "nvidia_config": config("nvidia", torch.device("cuda"))}
        payload["layers"] = layers
        payload.update(quantizers=quantizers, tuning=tuning)
        md = [
            *report.markdown_header("Linear layer forward+backward per recipe: kernels vs the reference on CUDA", meta),
            f"T = {args.tokens}, K = N = {args.features}, bf16 operands. Copy bandwidth: {copy_gbs:.0f} GB/s.",
            "",
            report.markdown_table(layer_header, layer_cells),
            "",
            report.markdown_table(quantizer_header, quantizer_cells),
        ]
        report.write_result(args.out, "recipes", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
