"""``python -m quartet_compile.check`` (``quartet-check``): what the backend does on this machine's
GPU, and whether its kernels are right there.

Prints the device, the route each recipe takes and why, every kernel against the reference on
fresh random data (bit for bit where the rounding is deterministic; the GEMMs against the float64
product), the GEMM route's throughput against cuBLAS BF16, and one quantized linear layer's
forward+backward against BF16's; writes it all as JSON for bug reports. Without a GPU it says so
and lists the routes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import QuartetConfig, Recipe
from .eager import linear
from .nvfp4.format import NVFP4Tensor
from .nvfp4.randomness import random_signs
from .ops.routing import route
from .reference import quantize_four_over_six, quantize_ms_eden_rotated, quantize_rtn, quantize_rtn_2d, quantize_sr
from .version import versions


def routes(device: torch.device) -> list[dict[str, str]]:
    """The implementation each recipe takes on ``device``, and why."""
    rows = []
    for recipe in Recipe:
        decided = route(QuartetConfig(recipe=recipe).numerics, device)
        rows.append({"recipe": recipe.value, "implementation": decided.implementation.value, "reason": decided.reason})
    return rows


def fp4_difference(kernel: NVFP4Tensor, ref: NVFP4Tensor) -> str | None:
    """Where two NVFP4 tensors differ: tensor scale, E4M3 scale bytes, packed codes (``None``: bit
    for bit equal). The kernel tests assert with it too."""
    if not torch.equal(kernel.tensor_scale, ref.tensor_scale):
        return f"tensor scale {kernel.tensor_scale.item()!r} != {ref.tensor_scale.item()!r}"
    for name in ("scales", "codes"):
        a, b = getattr(kernel, name).view(torch.uint8), getattr(ref, name).view(torch.uint8)
        if a.shape != b.shape:
            return f"{name} shaped {tuple(a.shape)} != {tuple(b.shape)}"
        if not torch.equal(a, b):
            return f"{int((a != b).sum())} of {a.numel()} {name} differ"
    return None


def _fresh(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """bf16 Gaussian rows whose columns span six decades, so every block has its own scale."""
    device = generator.device
    x = torch.randn(rows, cols, device=device, generator=generator)
    x = x * torch.logspace(-3, 3, cols, device=device)
    return x[:, torch.randperm(cols, device=device, generator=generator)].bfloat16()


def exactness(device: torch.device, seed: int) -> list[dict[str, Any]]:
    """Each kernel against the reference on fresh data drawn with ``seed``."""
    from .kernels.blackwell import NATIVE_MAJORS, check_native_gemm
    from .kernels.gemm import unscaled_gemm
    from .kernels.ms_eden import ms_eden
    from .kernels.nvidia import nvidia_quantize
    from .kernels.quantize import quantize
    from .kernels.rotation import rotation_matrix

    generator = torch.Generator(device=device).manual_seed(seed)
    x, g = _fresh(1008, 2064, generator), _fresh(512, 1024, generator)  # 16x16 tiles take rows % 16 == 0
    seed_tensor = torch.randint(0, 2**62, (), device=device, generator=generator)
    rotation = rotation_matrix(random_signs(128, generator, device))
    cases: list[tuple[str, Callable[[], str | None]]] = [
        ("forward RTN", lambda: fp4_difference(quantize(x).fp4, quantize_rtn(x))),
        ("forward 4/6", lambda: fp4_difference(quantize(x, four_over_six=True).fp4, quantize_four_over_six(x))),
        ("forward RTN, 16x16 weight tiles", lambda: fp4_difference(quantize(x, tile_2d=True).fp4, quantize_rtn_2d(x))),
    ]

    def rotated(kernel: Callable[[dict], Any], reference: Callable[..., NVFP4Tensor]) -> str | None:
        debug: dict[str, torch.Tensor] = {}
        result = kernel(debug)
        return fp4_difference(result.fp4, reference(debug["rotated"], uniforms=debug["uniforms"]))

    cases += [
        ("backward MS-EDEN (given the kernel's rotation)",
         lambda: rotated(lambda d: ms_eden(g, rotation, seed_tensor, debug=d), quantize_ms_eden_rotated)),
        ("backward SR (nvidia recipe)",
         lambda: rotated(lambda d: nvidia_quantize(g, seed=seed_tensor, debug=d), quantize_sr)),
    ]  # fmt: skip

    def gemm() -> str | None:
        a, b = quantize(x, unscaled_bf16=True), quantize(_fresh(760, 2064, generator), unscaled_bf16=True)
        out = unscaled_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, torch.float32)
        exact = a.fp4.dequantize(torch.float64) @ b.fp4.dequantize(torch.float64).T
        error = ((out.double() - exact).norm() / exact.norm()).item()
        return None if error < 1e-5 else f"relative error {error:.2e} against the float64 product"

    cases.append(("GEMM of the bf16-operand route (float64 product within 1e-5)", gemm))
    if torch.cuda.get_device_capability(device)[0] in NATIVE_MAJORS:
        cases.append(("native FP4 GEMM (float64 product within 1e-5)", lambda: check_native_gemm(device)))
    rows = []
    for name, case in cases:
        try:
            failure = case()
        except Exception as error:  # a kernel that cannot run here is a finding, not a crash
            failure = f"{type(error).__name__}: {error}"
        rows.append({"kernel": name, "ok": failure is None, "detail": failure or "exact"})
    return rows


def median_ms(fn: Callable[[], object]) -> float:
    """Median ms of ``fn`` over ``triton.testing.do_bench``'s repetitions (CUDA events)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def layer_step(fn: Callable, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    """One forward+backward of ``fn(x, w)`` against the output gradient ``g``, the grads of
    ``x`` and ``w`` cleared first (what every layer timing runs)."""

    def run() -> None:
        x.grad = w.grad = None
        fn(x, w).backward(g)

    return run


def speed(device: torch.device, size: int = 8192, tokens: int = 8192, features: int = 4096) -> dict[str, float]:
    """The GEMM route's TFLOP/s at ``size``^3 against cuBLAS BF16, and a quartet2 linear layer's
    forward+backward against BF16's at ``tokens`` x ``features`` -> ``features``."""
    from .kernels.gemm import unscaled_gemm
    from .kernels.quantize import quantize

    a = quantize(torch.randn(size, size, device=device, dtype=torch.bfloat16), unscaled_bf16=True)
    b = quantize(torch.randn(size, size, device=device, dtype=torch.bfloat16), unscaled_bf16=True)
    flop = 2 * size**3
    bf16_ms = median_ms(lambda: torch.mm(a.unscaled_bf16, b.unscaled_bf16.T))
    route_ms = median_ms(
        lambda: unscaled_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, torch.bfloat16)
    )
    x = torch.randn(tokens, features, device=device, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(features, features, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, features, device=device, dtype=torch.bfloat16)
    config = QuartetConfig()
    layer_bf16 = median_ms(layer_step(F.linear, x, w, grad))
    layer_quartet = median_ms(layer_step(lambda x, w: linear(x, w, config=config), x, w, grad))
    return {
        "gemm_size": size,
        "cublas_bf16_tflops": flop / bf16_ms / 1e9,
        "nvfp4_route_tflops": flop / route_ms / 1e9,
        "gemm_ratio": bf16_ms / route_ms,
        "layer_shape": f"{tokens} x {features} -> {features}",
        "layer_bf16_ms": layer_bf16,
        "layer_quartet2_ms": layer_quartet,
        "layer_ratio": layer_quartet / layer_bf16,
    }


def run(out: Path | None, seed: int | None = None, timings: bool = True) -> dict[str, Any]:
    """Everything the command prints, as a dict (written to ``out`` as JSON when given)."""
    report: dict[str, Any] = {"command": " ".join(["quartet-check", *sys.argv[1:]]), "versions": versions()}
    if not torch.cuda.is_available():
        report["device"] = "no CUDA GPU: every recipe runs on the pure-PyTorch reference"
        report["routes"] = routes(torch.device("cpu"))
    else:
        device = torch.device("cuda", torch.cuda.current_device())
        major, minor = torch.cuda.get_device_capability(device)
        report["device"] = f"{torch.cuda.get_device_name(device)} (sm_{major}{minor})"
        report["routes"] = routes(device)
        if any(row["implementation"] != "reference" for row in report["routes"]):
            report["seed"] = seed if seed is not None else random.randrange(2**31)
            report["exactness"] = exactness(device, report["seed"])
            if timings:
                report["speed"] = speed(device)
    if out is not None:
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _print(report: dict[str, Any]) -> None:
    print(f"device: {report['device']}")
    print(", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print("\nroutes:")
    for row in report["routes"]:
        print(f"  {row['recipe']:14s} {row['implementation']:14s} {row['reason']}")
    if "exactness" in report:
        print(f"\nkernels against the reference (seed {report['seed']}):")
        for row in report["exactness"]:
            print(f"  {'ok  ' if row['ok'] else 'FAIL'} {row['kernel']}: {row['detail']}")
    if "speed" in report:
        s = report["speed"]
        print(
            f"\nGEMM {s['gemm_size']}^3: NVFP4 route {s['nvfp4_route_tflops']:.0f} TFLOP/s, cuBLAS BF16 "
            f"{s['cublas_bf16_tflops']:.0f} TFLOP/s ({s['gemm_ratio']:.2f}x)"
        )
        print(
            f"linear forward+backward {s['layer_shape']}: quartet2 {s['layer_quartet2_ms']:.3f} ms, "
            f"BF16 {s['layer_bf16_ms']:.3f} ms ({s['layer_ratio']:.2f}x BF16's time)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("quartet-check.json"), help="JSON report (%(default)s)")
    parser.add_argument("--seed", type=int, help="replay the random data of an earlier report")
    parser.add_argument("--no-timings", action="store_true", help="routes and exactness only")
    args = parser.parse_args(argv)
    report = run(args.out, args.seed, timings=not args.no_timings)
    _print(report)
    print(f"\nwritten: {args.out}")
    if not all(row["ok"] for row in report.get("exactness", [])):
        raise SystemExit("some kernels disagree with the reference on this GPU: please report it with the JSON")


if __name__ == "__main__":
    main()
