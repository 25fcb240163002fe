"""A short tour of the NVFP4 numerics: quantizer errors and one quantized linear layer per
recipe against its exact float64 result. ``quartet-tour`` (or ``python -m quartet_bench.tour``) runs it."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from quartet_compile import QuartetConfig, Recipe, linear
from quartet_compile.reference import (
    inverse_rht,
    quantize_four_over_six,
    quantize_ms_eden,
    quantize_rtn,
    quantize_sr,
    random_signs,
)


def _rel(approx: torch.Tensor, exact: torch.Tensor) -> float:
    approx, exact = approx.detach().double(), exact.detach().double()
    return float((approx - exact).norm() / exact.norm())


def quantizer_errors(x: torch.Tensor, gen: torch.Generator) -> dict[str, float]:
    """Relative error ||deq(q(x)) - x|| / ||x|| of each quantizer of SPEC sections 2-3."""
    signs = random_signs(128, gen, x.device)
    return {
        "RTN (forward, 'six')": _rel(quantize_rtn(x).dequantize(), x),
        "4/6 (forward)": _rel(quantize_four_over_six(x).dequantize(), x),
        "E2M1 SR (nvidia backward)": _rel(quantize_sr(x, source=gen).dequantize(), x),
        "MS-EDEN (quartet2 backward)": _rel(inverse_rht(quantize_ms_eden(x, signs, source=gen).dequantize(), signs), x),
    }


def linear_errors(tokens: int, features: int, gen: torch.Generator) -> dict[str, tuple[float, float, float]]:
    """Per recipe: relative error of y, dx and dW against the exact float64 linear layer."""
    x = torch.randn(tokens, features, generator=gen)
    w = torch.randn(features, features, generator=gen) / features**0.5
    g = torch.randn(tokens, features, generator=gen)
    xe, we = x.double().requires_grad_(), w.double().requires_grad_()
    ye = F.linear(xe, we)
    ye.backward(g.double())
    rows = {}
    for recipe in Recipe:
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = linear(xr, wr, config=QuartetConfig(recipe=recipe, seed=int(torch.randint(0, 2**31, (), generator=gen))))
        y.backward(g)
        rows[recipe.value] = (_rel(y, ye), _rel(xr.grad, xe.grad), _rel(wr.grad, we.grad))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gen = torch.Generator().manual_seed(args.seed)

    x = torch.randn(args.tokens, args.features, generator=gen)
    print(f"Quantizing a {args.tokens}x{args.features} Gaussian tensor (relative error, lower is better):")
    for name, err in quantizer_errors(x, gen).items():
        print(f"  {name:<30} {err:.4f}")

    print(f"\nOne linear layer, T={args.tokens}, K=N={args.features}: relative error vs exact float64")
    print(f"  {'recipe':<15} {'y':>8} {'dx':>8} {'dW':>8}")
    for recipe, (ey, edx, edw) in linear_errors(args.tokens, args.features, gen).items():
        print(f"  {recipe:<15} {ey:8.4f} {edx:8.4f} {edw:8.4f}")


if __name__ == "__main__":
    main()
