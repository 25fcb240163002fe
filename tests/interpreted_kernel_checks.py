"""Kernel checks run by ``test_kernels_cpu.py`` in a subprocess with ``TRITON_INTERPRET=1``
(the interpreter is chosen when kernels are defined, so it cannot share a process with the
compile-only tests). Each check draws fresh inputs and prints its seed on failure."""

from __future__ import annotations

import os
import sys

import torch

from quartet_compile.kernels.ms_eden import ms_eden, rotation_matrix
from quartet_compile.kernels.quantize import quantize
from quartet_compile.reference import (
    quantize_four_over_six,
    quantize_ms_eden_rotated,
    quantize_rtn,
    random_signs,
    rht,
)


def _inputs(rows: int, cols: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    spread = torch.logspace(-4, 4, cols)[torch.randperm(cols, generator=generator)]
    return (torch.randn(rows, cols, generator=generator) * spread).to(dtype)


def _same(kernel, ref) -> None:
    assert torch.equal(kernel.tensor_scale, ref.tensor_scale), (kernel.tensor_scale, ref.tensor_scale)
    assert torch.equal(kernel.scales.view(torch.uint8), ref.scales.view(torch.uint8)), "scales differ"
    assert torch.equal(kernel.codes, ref.codes), "codes differ"


def forward_quantize(generator: torch.Generator) -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for four_over_six in (False, True):
            for rows, cols in ((37, 272), (64, 128)):
                x = _inputs(rows, cols, dtype, generator)
                k = quantize(x, four_over_six=four_over_six, unscaled_bf16=True)
                ref = (quantize_four_over_six if four_over_six else quantize_rtn)(x)
                _same(k.fp4, ref)
                assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())
    x = _inputs(48, 64, torch.float32, generator).T
    _same(quantize(x, four_over_six=True).fp4, quantize_four_over_six(x))
    zero = quantize(torch.zeros(16, 32)).fp4
    assert zero.tensor_scale.item() == 1.0 and not zero.dequantize().any()
    bad = _inputs(16, 32, torch.float32, generator)
    bad[2, 3] = float("nan")
    assert quantize(bad).fp4.dequantize().isnan().all()


def ms_eden_stage(generator: torch.Generator) -> None:
    signs = random_signs(128, generator, torch.device("cpu"))
    rotation = rotation_matrix(signs)
    seed = torch.randint(0, 2**62, (), generator=generator)
    g = _inputs(64, 256, torch.float32, generator)
    packed = quantize(_inputs(128, 48, torch.float32, generator), four_over_six=True).fp4
    cases = [
        (g.bfloat16(), False, g.bfloat16().float()),
        (g.T.contiguous(), True, g),
        (packed, True, packed.dequantize(torch.float32).T),
    ]
    for operand, transpose, exact in cases:
        debug: dict[str, torch.Tensor] = {}
        k = ms_eden(operand, rotation, seed, transpose=transpose, unscaled_bf16=True, debug=debug)
        ref_rotated = rht(exact, signs)
        assert (debug["rotated"] - ref_rotated).norm() <= 1e-6 * ref_rotated.norm()
        ref = quantize_ms_eden_rotated(debug["rotated"], uniforms=debug["uniforms"])
        _same(k.fp4, ref)
        assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())
    again: dict[str, torch.Tensor] = {}
    ms_eden(g.bfloat16(), rotation, seed, debug=again)
    other: dict[str, torch.Tensor] = {}
    ms_eden(g.bfloat16(), rotation, seed + 1, debug=other)
    assert not torch.equal(again["uniforms"], other["uniforms"]), "the seed must change the draws"


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    seed = int.from_bytes(os.urandom(4), "little")
    try:
        globals()[sys.argv[1]](torch.Generator().manual_seed(seed))
    except AssertionError:
        print(f"{sys.argv[1]} failed with seed {seed}", file=sys.stderr)
        raise
