"""Kernel benchmark (CUDA): quantizers against copy bandwidth, NVFP4 GEMMs against cuBLAS
bf16, and one quantized linear forward+backward against the bf16 one, all in one run.

    python -m quartet_bench.studies.kernels [--out bench/results] [--tune]

Times are medians of ``triton.testing.do_bench`` (CUDA events). Every ratio compares with a
baseline measured in the same process: ``torch.Tensor.copy_`` for bandwidth, ``torch.mm`` in
bf16 (cuBLAS) for TFLOP/s, ``F.linear`` forward+backward for the layer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from quartet_compile import QuartetConfig, linear
from quartet_compile.kernels.configs import config, override
from quartet_compile.kernels.gemm import cublas_gemm, tma_gemm
from quartet_compile.kernels.ms_eden import ms_eden
from quartet_compile.kernels.quantize import quantize, tensor_amax
from quartet_compile.kernels.rotation import rotation_matrix
from quartet_compile.nvfp4.randomness import random_signs

from .. import report
from .common import copy_bandwidth, host_us, layer_step, median_ms
from .quantizer_breakdown import kernel_times_us

LLAMA_1B_TOKENS = 16384
LLAMA_1B_FEATURES = (2048, 5632, 8192)


def _row(name: str, ms: float, nbytes: int, copy_gbs: float) -> dict:
    gbs = nbytes / ms / 1e6
    return {"kernel": name, "ms": ms, "bytes": nbytes, "GB/s": gbs, "of_copy": gbs / copy_gbs}


def quantizer_rows(copy_gbs: float, tokens: int = 16384, features: int = 4096) -> list[dict]:
    """Bytes counted: the input read once and each output written once (codes K/2, scales
    K/16, optional bf16 operand 2 bytes per element); the amax pass is inside the time."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    n = x.numel()
    fp4 = n // 2 + n // 16
    rows = []
    for name, kwargs, out in [
        ("rtn: codes", {"four_over_six": False}, fp4),
        ("4/6: codes", {"four_over_six": True}, fp4),
        ("4/6: codes + bf16 operand", {"four_over_six": True, "unscaled_bf16": True}, fp4 + 2 * n),
    ]:
        rows.append(_row(f"forward {name}", median_ms(lambda kw=kwargs: quantize(x, **kw)), 2 * n + out, copy_gbs))
    rotation = rotation_matrix(random_signs(128, None, torch.device("cuda")))
    seed = torch.randint(0, 2**62, (), device="cuda")
    xq = quantize(x, four_over_six=True).fp4
    for name, operand, transpose, in_bytes in [
        ("g along N", x, False, 2 * n),
        ("g^T along T (strided read)", x, True, 2 * n),
        ("saved FP4 x^T along T (re-quantize)", xq, True, fp4),
    ]:
        for out_name, kwargs, out in [
            ("codes", {}, fp4),
            ("bf16 operand", {"codes": False, "unscaled_bf16": True}, 2 * n),
        ]:
            ms = median_ms(lambda o=operand, t=transpose, kw=kwargs: ms_eden(o, rotation, seed, transpose=t, **kw))
            rows.append(_row(f"ms-eden {name}: {out_name}", ms, in_bytes + out, copy_gbs))
    return rows


def _operands(m: int, n: int, k: int):
    a = quantize(torch.randn(m, k, device="cuda", dtype=torch.bfloat16), unscaled_bf16=True)
    b = quantize(torch.randn(n, k, device="cuda", dtype=torch.bfloat16), unscaled_bf16=True)
    return a, b


def gemm_rows(shapes: list[tuple[int, int, int]]) -> list[dict]:
    rows = []
    for m, n, k in shapes:
        a, b = _operands(m, n, k)
        flop = 2 * m * n * k
        bf16 = median_ms(lambda a=a, b=b: torch.mm(a.unscaled_bf16, b.unscaled_bf16.T))
        row = {"M": m, "N": n, "K": k, "cublas_bf16_tflops": flop / bf16 / 1e9}
        for name, fn in [
            ("cublas_route", lambda a=a, b=b, g=cublas_gemm: _unscaled(g, a, b)),
            ("tma", lambda a=a, b=b, g=tma_gemm: _unscaled(g, a, b)),
        ]:
            ms = median_ms(fn)
            row[f"nvfp4_{name}_tflops"] = flop / ms / 1e9
            row[f"{name}_of_bf16"] = bf16 / ms
        rows.append(row)
        del a, b
    return rows


GEMMS = ("cublas_route", "tma")


def _unscaled(gemm, a, b):
    return gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, torch.bfloat16)


def _tiles(shapes: list[tuple[int, int, int, int, int]]) -> list[dict]:
    """GEMM tile configs from (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)."""
    return [
        {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages}
        for bm, bn, bk, warps, stages in shapes
    ]


def _tune_gemm(name: str, kernel: str, fn, candidates: list[dict], flop: int) -> list[dict]:
    """Time ``fn`` with each tile config of ``kernel``."""
    rows = []
    for candidate in candidates:
        with override(kernel, candidate):
            try:
                rows.append({"kernel": name, **candidate, "tflops": flop / median_ms(fn) / 1e9})
            except Exception as error:  # a config that does not fit shared memory is reported, not fatal
                rows.append({"kernel": name, **candidate, "error": str(error)[:200]})
        print(rows[-1], flush=True)
    return rows


def tune_gemms(m: int = 8192, n: int = 8192, k: int = 8192) -> list[dict]:
    a, b = _operands(m, n, k)
    tma = _tiles(
        [(128, 256, 64, 8, 4), (128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3)]
    )
    return _tune_gemm("tma", "tma_gemm", lambda: _unscaled(tma_gemm, a, b), tma, 2 * m * n * k)


def tune_quantizers(tokens: int = 16384, features: int = 4096) -> list[dict]:
    """Time the statistics (amax) pass alone, then each forward quantizer, under a few tile
    configs (MS-EDEN's passes: :mod:`.ms_eden_tiles`, at a model's shapes)."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    rows = []
    candidates = [
        ("stats", {"BLOCK_SIZE": b, "num_warps": w}, "amax", lambda: tensor_amax(x))
        for b, w in [(16384, 8), (8192, 8), (4096, 8)]
    ] + [
        ("quantize", {"BLOCK_R": r, "BLOCK_C": c, "num_warps": w}, name, fn)
        for r, c, w in [(8, 256, 4), (16, 128, 4), (16, 128, 2), (32, 128, 4)]
        for name, fn in [("rtn", lambda: quantize(x)), ("4/6", lambda: quantize(x, four_over_six=True))]
    ]
    for kernel, values, name, fn in candidates:
        with override(kernel, values):
            rows.append({"kernel": name, "config": values, "ms": median_ms(fn)})
        print(rows[-1], flush=True)
    return rows


def _linear_steps(tokens: int, features: int) -> tuple:
    """bf16 and quartet2 forward+backward closures on fresh operands."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(features, features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    config = QuartetConfig(recipe="quartet2")
    bf16 = layer_step(F.linear, x, w, g)
    return bf16, layer_step(lambda x, w: linear(x, w, config=config), x, w, g), x, w, config


def linear_row(tokens: int = 16384, features: int = 4096) -> dict:
    """quartet2 forward+backward through the custom ops vs ``F.linear`` in bf16 (cuBLAS): wall
    time per call (launch gaps included, as a user without CUDA graphs sees them) and the sum
    of its kernels' device times (what CUDA graphs would leave); and the host time per call
    at T = K = N = 128, where device work is negligible (what bounds small batches)."""
    bf16, quartet, x, w, quartet_config = _linear_steps(tokens, features)
    row = {"T": tokens, "K": features, "N": features, "bf16_ms": median_ms(bf16), "quartet2_ms": median_ms(quartet)}
    row["ratio"] = row["quartet2_ms"] / row["bf16_ms"]
    for name, fn in [("bf16", bf16), ("quartet2", quartet)]:
        kernels = kernel_times_us(fn)
        row[f"{name}_kernel_ms"] = sum(us for _, us in kernels) / 1e3
        row[f"{name}_launches"] = len(kernels)
        row[f"{name}_kernels_us"] = kernels
    row["kernel_ratio"] = row["quartet2_kernel_ms"] / row["bf16_kernel_ms"]
    row["forward_bf16_ms"] = median_ms(lambda: F.linear(x, w))
    row["forward_quartet2_ms"] = median_ms(lambda: linear(x, w, config=quartet_config))
    tiny_bf16, tiny_quartet, *_ = _linear_steps(128, 128)
    row["host_bf16_us"], row["host_quartet2_us"] = host_us(tiny_bf16), host_us(tiny_quartet)
    return row


def _markdown(results: dict) -> str:
    lines = [
        *report.markdown_header("Kernel benchmark", results),
        f"Copy bandwidth (read + write): {results['copy_GBps']:.0f} GB/s",
        "",
        "| quantizer | ms | GB/s | of copy |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['kernel']} | {r['ms']:.3f} | {r['GB/s']:.0f} | {r['of_copy']:.0%} |" for r in results["quantizers"]
    ]
    lines += [
        "",
        "TFLOP/s of each NVFP4 GEMM and its share of cuBLAS bf16 on the same shape. Shipped: the TMA "
        "GEMM of the unscaled operands (sm_90+) where the output fills the device (every shape here), "
        "else the cuBLAS route; `quartet_bench.studies.gemm_routes` compares them on training-step shapes.",
        "",
        "| M | N | K | cuBLAS bf16 | cuBLAS route | of bf16 | TMA (shipped) | of bf16 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['M']} | {r['N']} | {r['K']} | {r['cublas_bf16_tflops']:.0f} | "
        + " | ".join(f"{r[f'nvfp4_{g}_tflops']:.0f} | {r[f'{g}_of_bf16']:.0%}" for g in GEMMS)
        + " |"
        for r in results["gemms"]
    ]
    lin = results["linear"]
    lines += [
        "",
        "Linear layer: wall time per call, and the sum of its kernels' device times (launches).",
        "",
        "| linear fwd+bwd (T, K, N) | bf16 ms | quartet2 ms | ratio | bf16 kernels ms | quartet2 kernels ms "
        "| ratio | fwd bf16 ms | fwd quartet2 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {lin['T']}, {lin['K']}, {lin['N']} | {lin['bf16_ms']:.3f} | {lin['quartet2_ms']:.3f} | "
        f"{lin['ratio']:.2f} | {lin['bf16_kernel_ms']:.3f} ({lin['bf16_launches']}) | "
        f"{lin['quartet2_kernel_ms']:.3f} ({lin['quartet2_launches']}) | {lin['kernel_ratio']:.2f} | "
        f"{lin['forward_bf16_ms']:.3f} | {lin['forward_quartet2_ms']:.3f} |",
        "",
        f"Host time per fwd+bwd call at T = K = N = 128 (device work negligible): bf16 "
        f"{lin['host_bf16_us']:.0f} us, quartet2 {lin['host_quartet2_us']:.0f} us.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--tune", action="store_true", help="also time tile configs of the Triton kernels")
    args = parser.parse_args()
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth()
    results = {
        **report.environment(torch.device("cuda")),
        "tma_gemm_config": config("tma_gemm", torch.device("cuda")),
        "copy_GBps": copy_gbs,
    }
    if args.tune:
        results["tuning"] = tune_gemms() + tune_quantizers()
    results["quantizers"] = quantizer_rows(copy_gbs)
    shapes = [(8192, 8192, 8192)] + [(LLAMA_1B_TOKENS, n, k) for k in LLAMA_1B_FEATURES for n in LLAMA_1B_FEATURES]
    results["gemms"] = gemm_rows(shapes)
    results["linear"] = linear_row()
    table = _markdown(results)
    report.write_result(args.out, "kernels", results, table)
    print(table)


if __name__ == "__main__":
    main()
