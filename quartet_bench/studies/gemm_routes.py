"""Which GEMM route wins on a training step's shapes (CUDA): the TMA GEMM, the same GEMM with
pointer loads (what graphs compiled with torch 2.11's C++ wrapper launch) and the cuBLAS route of
the unscaled NVFP4 operands, and what ``unscaled_gemm`` ships eagerly, against cuBLAS bf16 on the
same operands, for the forward, input-gradient and weight-gradient GEMMs of built-in models.

    python -m quartet_bench.studies.gemm_routes --out bench/results

The weight gradient reduces over the tokens: a small ``[N, K]`` output with a long reduction,
which is where the routes differ most (``kernels.gemm.TMA_MIN_WAVE`` is read off this table).
Times are medians of ``triton.testing.do_bench``; each ratio is against cuBLAS bf16 measured
in the same run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from triton.testing import do_bench

from quartet_compile.kernels import gemm
from quartet_compile.kernels.configs import config

from .. import report
from ..models import PRESETS

STEP_TOKENS = {"30m": 64 * 512, "125m": 64 * 512, "1b": 4 * 2048}
"""Tokens per step of the committed accuracy (30m, 125m) and speed (1b) studies."""


def linear_shapes(model: str, tokens: int) -> list[tuple[str, str, int, int, int, torch.dtype]]:
    """``(layer, gemm, M, N, K, output dtype)`` of every distinct linear of ``model``: the
    forward ``x W^T``, the input gradient ``g W`` and the weight gradient ``g^T x`` (a float32
    output, as for float32 master weights under autocast)."""
    cfg = PRESETS[model]
    layers = {
        "attention (q, k, v, o)": (cfg.dim, cfg.dim),
        "mlp up, gate": (cfg.dim, cfg.ffn_dim),
        "mlp down": (cfg.ffn_dim, cfg.dim),
        "lm head": (cfg.dim, cfg.vocab_size),
    }
    shapes = []
    for layer, (k, n) in layers.items():
        shapes += [
            (layer, "forward", tokens, n, k, torch.bfloat16),
            (layer, "input grad", tokens, k, n, torch.bfloat16),
            (layer, "weight grad", n, k, tokens, torch.float32),
        ]
    return shapes


def median_us(fn) -> float:
    return do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3


def time_routes(m: int, n: int, k: int, out_dtype: torch.dtype) -> dict:
    """Median us of cuBLAS bf16 and of each route on fresh operands; which route ships."""
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    one = torch.ones((), device="cuda")
    times = {
        "bf16_us": median_us(lambda: torch.mm(a, b.T)),
        "tma_us": median_us(lambda: gemm.tma_gemm(a, b, one, one, out_dtype)),
        "load_us": median_us(lambda: gemm.load_gemm(a, b, one, one, out_dtype)),
        "cublas_route_us": median_us(lambda: gemm.cublas_gemm(a, b, one, one, out_dtype)),
        "shipped_us": median_us(lambda: gemm.unscaled_gemm(a, b, one, one, out_dtype)),
    }
    return {**times, "shipped": "tma" if gemm.fills_device(m, n, a.device) else "cublas_route"}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [*report.markdown_header("NVFP4 GEMM routes on training-step shapes", meta)]
    lines += [f"Route rule: TMA when the output has >= {meta['tma_min_wave']} x {meta['sms']} SMs tiles "
              f"of {meta['tile']}. us per GEMM (median); x bf16 = time / cuBLAS bf16 time.", "",
              "| model | layer | GEMM | M | N | K | bf16 us | TMA us | pointer loads us | cuBLAS route us | "
              "shipped | shipped us | x bf16 |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['layer']} | {r['gemm']} | {r['M']} | {r['N']} | {r['K']} | {r['bf16_us']:.1f} | "
            f"{r['tma_us']:.1f} | {r['load_us']:.1f} | {r['cublas_route_us']:.1f} | {r['shipped']} | "
            f"{r['shipped_us']:.1f} | {r['shipped_us'] / r['bf16_us']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(STEP_TOKENS))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="gemm-routes")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    cfg = config("tma_gemm", torch.device("cuda"))
    meta = {**report.environment(device), "tma_min_wave": gemm.TMA_MIN_WAVE,
            "sms": torch.cuda.get_device_properties(device).multi_processor_count,
            "tile": f"{cfg['BLOCK_M']}x{cfg['BLOCK_N']}"}  # fmt: skip
    rows = []
    for model in args.models.split(","):
        for layer, name, m, n, k, out_dtype in linear_shapes(model, STEP_TOKENS[model]):
            row = {"model": model, "layer": layer, "gemm": name, "M": m, "N": n, "K": k, "out": str(out_dtype)}
            rows.append({**row, **time_routes(m, n, k, out_dtype)})
            print(" ".join(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in rows[-1].items()), flush=True)  # fmt: skip
    report.publish(markdown(rows, meta), args.out, args.name, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
