"""Kernel benchmark (CUDA): quantizers against copy bandwidth, NVFP4 GEMMs against cuBLAS
bf16, and one quantized linear forward+backward against the bf16 one, all in one run.

    python bench/kernels.py [--out bench/results] [--tune]

Times are medians of ``triton.testing.do_bench`` (CUDA events). Every ratio compares with a
baseline measured in the same process: ``torch.Tensor.copy_`` for bandwidth, ``torch.mm`` in
bf16 (cuBLAS) for TFLOP/s, ``F.linear`` forward+backward for the layer.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from quartet_compile.config import QuartetConfig
from quartet_compile.kernels import gemm as gemm_module
from quartet_compile.kernels import ms_eden as ms_eden_module
from quartet_compile.kernels import quantize as quantize_module
from quartet_compile.kernels.gemm import cublas_gemm, dequant_gemm
from quartet_compile.kernels.ms_eden import ms_eden, rotation_matrix
from quartet_compile.kernels.quantize import quantize, tensor_amax
from quartet_compile.ops import op_arguments, quartet_linear_op
from quartet_compile.reference import random_signs

LLAMA_1B_TOKENS = 16384
LLAMA_1B_FEATURES = (2048, 5632, 8192)


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn(1 << 28, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / median_ms(lambda: dst.copy_(src)) / 1e6


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
        triton_ms = median_ms(lambda a=a, b=b: dequant_gemm(a.fp4, b.fp4, torch.bfloat16))
        cublas_ms = median_ms(
            lambda a=a, b=b: cublas_gemm(
                a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, torch.bfloat16
            )
        )
        rows.append(
            {
                "M": m,
                "N": n,
                "K": k,
                "cublas_bf16_tflops": flop / bf16 / 1e9,
                "nvfp4_triton_tflops": flop / triton_ms / 1e9,
                "nvfp4_cublas_route_tflops": flop / cublas_ms / 1e9,
                "triton_of_bf16": bf16 / triton_ms,
                "cublas_route_of_bf16": bf16 / cublas_ms,
            }
        )
        del a, b
    return rows


def tune_dequant_gemm(m: int = 8192, n: int = 8192, k: int = 8192) -> list[dict]:
    a, b = _operands(m, n, k)
    rows = []
    for bm, bn, bk, warps, stages in [
        (128, 128, 128, 8, 3),
        (128, 256, 128, 8, 3),
        (128, 256, 64, 8, 4),
        (256, 128, 128, 8, 3),
        (128, 128, 256, 8, 2),
        (128, 128, 128, 4, 4),
        (64, 256, 128, 8, 3),
    ]:
        cfg = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "num_warps": warps, "num_stages": stages}
        gemm_module.DEQUANT_GEMM_CONFIG.update(cfg)
        try:
            ms = median_ms(lambda: dequant_gemm(a.fp4, b.fp4, torch.bfloat16))
            rows.append({**cfg, "tflops": 2 * m * n * k / ms / 1e9})
        except Exception as error:  # a config that does not fit shared memory is reported, not fatal
            rows.append({**cfg, "error": str(error)[:200]})
        print(rows[-1], flush=True)
    return rows


def tune_quantizers(tokens: int = 16384, features: int = 4096) -> list[dict]:
    """Time the statistics (amax) pass alone, then each quantizer, under a few tile configs."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    rows = []
    rotation = rotation_matrix(random_signs(128, None, torch.device("cuda")))
    seed = torch.randint(0, 2**62, (), device="cuda")
    candidates = (
        [
            (quantize_module.AMAX_CONFIG, {"BLOCK_SIZE": b, "num_warps": w}, "amax", lambda: tensor_amax(x))
            for b, w in [(16384, 8), (8192, 8), (4096, 8)]
        ]
        + [
            (quantize_module.QUANTIZE_CONFIG, {"BLOCK_R": r, "BLOCK_C": c, "num_warps": w}, name, fn)
            for r, c, w in [(8, 256, 4), (16, 128, 4), (16, 128, 2), (32, 128, 4)]
            for name, fn in [("rtn", lambda: quantize(x)), ("4/6", lambda: quantize(x, four_over_six=True))]
        ]
        + [
            (
                ms_eden_module.MS_EDEN_CONFIG,
                {"BLOCK_R": r, "num_warps": w},
                "ms-eden",
                lambda: ms_eden(x, rotation, seed),
            )
            for r, w in [(64, 4), (64, 8), (128, 8)]
        ]
    )
    for target, config, name, fn in candidates:
        saved = dict(target)
        target.update(config)
        rows.append({"kernel": name, "config": config, "ms": median_ms(fn)})
        target.update(saved)
        print(rows[-1], flush=True)
    return rows


def linear_row(tokens: int = 16384, features: int = 4096) -> dict:
    """quartet2 forward+backward through the custom ops vs ``F.linear`` in bf16 (cuBLAS)."""
    x = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(features, features, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(tokens, features, device="cuda", dtype=torch.bfloat16)
    kwargs = op_arguments(QuartetConfig(recipe="quartet2"))

    def step(fn):
        def run():
            x.grad = w.grad = None
            fn(x, w).backward(g)

        return run

    bf16 = median_ms(step(lambda x, w: F.linear(x, w)))
    quartet = median_ms(step(lambda x, w: quartet_linear_op(x, w, **kwargs)))
    fwd_bf16 = median_ms(lambda: F.linear(x, w))
    fwd_quartet = median_ms(lambda: quartet_linear_op(x, w, **kwargs))
    return {
        "T": tokens,
        "K": features,
        "N": features,
        "bf16_ms": bf16,
        "quartet2_ms": quartet,
        "ratio": quartet / bf16,
        "forward_bf16_ms": fwd_bf16,
        "forward_quartet2_ms": fwd_quartet,
    }


def _markdown(results: dict) -> str:
    lines = [
        f"# Kernel benchmark on {results['device']}",
        "",
        f"`{results['command']}`",
        "",
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
        "| M | N | K | cuBLAS bf16 TFLOP/s | NVFP4 Triton | of bf16 | NVFP4 cuBLAS route | of bf16 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['M']} | {r['N']} | {r['K']} | {r['cublas_bf16_tflops']:.0f} | {r['nvfp4_triton_tflops']:.0f} | "
        f"{r['triton_of_bf16']:.0%} | {r['nvfp4_cublas_route_tflops']:.0f} | {r['cublas_route_of_bf16']:.0%} |"
        for r in results["gemms"]
    ]
    lin = results["linear"]
    lines += [
        "",
        "| linear fwd+bwd (T, K, N) | bf16 ms | quartet2 ms | ratio | fwd bf16 ms | fwd quartet2 ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| {lin['T']}, {lin['K']}, {lin['N']} | {lin['bf16_ms']:.3f} | {lin['quartet2_ms']:.3f} | "
        f"{lin['ratio']:.2f} | {lin['forward_bf16_ms']:.3f} | {lin['forward_quartet2_ms']:.3f} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--tune", action="store_true", help="also time tile configs of the Triton GEMM")
    args = parser.parse_args()
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth()
    results = {
        "device": torch.cuda.get_device_name(),
        "versions": {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "python": platform.python_version(),
            "cuda": torch.version.cuda,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "dequant_gemm_config": dict(gemm_module.DEQUANT_GEMM_CONFIG),
        "copy_GBps": copy_gbs,
    }
    if args.tune:
        results["tuning"] = tune_dequant_gemm() + tune_quantizers()
        gemm_module.DEQUANT_GEMM_CONFIG.update(results["dequant_gemm_config"])
    results["quantizers"] = quantizer_rows(copy_gbs)
    shapes = [(8192, 8192, 8192)] + [(LLAMA_1B_TOKENS, n, k) for k in LLAMA_1B_FEATURES for n in LLAMA_1B_FEATURES]
    results["gemms"] = gemm_rows(shapes)
    results["linear"] = linear_row()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kernels.json").write_text(json.dumps(results, indent=2, default=str))
    table = _markdown(results)
    (args.out / "kernels.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
