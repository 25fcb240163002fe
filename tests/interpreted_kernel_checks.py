"""Kernel checks run by ``test_kernels_cpu.py`` in a subprocess with ``TRITON_INTERPRET=1``
(the interpreter is chosen when kernels are defined, so it cannot share a process with the
compile-only tests). Each check draws fresh inputs and prints its seed on failure."""

from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl
from fp4_asserts import assert_same_fp4, assert_same_quantized

from quartet_compile.config import QuartetConfig
from quartet_compile.kernels import configs, layer
from quartet_compile.kernels.dequantize import dequantize_unscaled
from quartet_compile.kernels.ms_eden import Operand, ms_eden, ms_eden_gemms
from quartet_compile.kernels.nvfp4_math import FAST_DIVISION_MIN, divide, e2m1_round_code, e2m1_sr, e4m3_rne, e4m3_sr
from quartet_compile.kernels.nvidia import nvidia_quantize
from quartet_compile.kernels.quantize import quantize, quantize_pair, tensor_amax, tensor_stats
from quartet_compile.kernels.rotation import random_rotation, rotation_matrix
from quartet_compile.reference import (
    decode_e2m1,
    nvfp4_matmul,
    quantize_four_over_six,
    quantize_ms_eden_rotated,
    quantize_rtn,
    quantize_rtn_2d,
    quantize_sr,
    random_signs,
    rht,
    round_to_e2m1,
    round_to_e4m3,
    stochastic_round_to_e2m1,
    stochastic_round_to_e4m3,
)
from quartet_compile.reference.hadamard import sylvester_pm1


def _inputs(rows: int, cols: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    spread = torch.logspace(-4, 4, cols)[torch.randperm(cols, generator=generator)]
    return (torch.randn(rows, cols, generator=generator) * spread).to(dtype)


@triton.jit
def _rounding_kernel(
    x_ptr, u_ptr, q_ptr, code_ptr, e4m3_ptr, sr_ptr, e2m1_sr_ptr, e2m1_sr_code_ptr, n, BLOCK: tl.constexpr
):
    i = tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + i, mask=mask)
    uniform = tl.load(u_ptr + i, mask=mask)
    q, code = e2m1_round_code(x)
    tl.store(q_ptr + i, q, mask=mask)
    tl.store(code_ptr + i, code, mask=mask)
    tl.store(e4m3_ptr + i, e4m3_rne(tl.abs(x)), mask=mask)
    tl.store(sr_ptr + i, e4m3_sr(tl.abs(x), uniform), mask=mask)
    q_sr, code_sr = e2m1_sr(x, uniform)
    tl.store(e2m1_sr_ptr + i, q_sr, mask=mask)
    tl.store(e2m1_sr_code_ptr + i, code_sr, mask=mask)


def rounding(generator: torch.Generator) -> None:
    """Every E2M1 midpoint and grid point, one float32 ulp either side, both signs, zeros,
    saturation, plus E4M3 subnormal/normal boundaries and random values."""
    points = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 7.0, 1e30])
    e4m3 = torch.tensor([2.0**-10, 2.0**-9, 2.0**-7, 2.0**-6, 0.015625 * 1.0625, 240.0, 447.0, 448.0, 464.0, 1e9])
    x = torch.cat(
        [points, e4m3, torch.rand(200, generator=generator) * 8, torch.randn(200, generator=generator) * 1e-2]
    )
    x = torch.cat([x, torch.nextafter(x, torch.full_like(x, float("inf"))), torch.nextafter(x, torch.zeros_like(x))])
    x = torch.cat([x, -x])
    n = x.numel()
    # Uniform draws just below, at and above each SR threshold too: the comparison is strict.
    uniforms = torch.rand(n, generator=generator)
    fraction = (x.abs().clamp(max=6.0) - decode_e2m1(stochastic_round_to_e2m1(x, torch.ones(n)))).abs()
    step = torch.where(x.abs() < 2, 0.5, torch.where(x.abs() < 4, 1.0, 2.0))
    threshold = (fraction / step).clamp(max=torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))
    pick = torch.rand(n, generator=generator)
    uniforms = torch.where(pick < 0.2, threshold, uniforms)
    uniforms = torch.where((pick >= 0.2) & (pick < 0.3), torch.nextafter(threshold, torch.zeros(n)), uniforms)
    q, code, e4, sr = torch.empty(n), torch.empty(n, dtype=torch.int32), torch.empty(n), torch.empty(n)
    q_sr, code_sr = torch.empty(n), torch.empty(n, dtype=torch.int32)
    _rounding_kernel[(1,)](x, uniforms, q, code, e4, sr, q_sr, code_sr, n, BLOCK=triton.next_power_of_2(n))
    expected = round_to_e2m1(x)
    assert torch.equal(code.to(torch.uint8), expected), x[code.to(torch.uint8) != expected]
    assert torch.equal(q, decode_e2m1(expected))
    assert torch.equal(e4, round_to_e4m3(x.abs()))
    assert torch.equal(sr, stochastic_round_to_e4m3(x.abs(), uniforms))
    expected_sr = stochastic_round_to_e2m1(x, uniforms)
    assert torch.equal(code_sr.to(torch.uint8), expected_sr), x[code_sr.to(torch.uint8) != expected_sr]
    assert torch.equal(q_sr.view(torch.int32), decode_e2m1(expected_sr).view(torch.int32))


@triton.jit
def _division_kernel(x_ptr, d_ptr, fast_ptr, exact_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    mask = i < n
    x = tl.load(x_ptr + i, mask=mask, other=1.0)
    d = tl.load(d_ptr + i, mask=mask, other=1.0)
    tl.store(fast_ptr + i, divide(x, d, tl.math.div_rn(1.0, d), True), mask=mask)
    tl.store(exact_ptr + i, divide(x, d, 0.0, False), mask=mask)


def division(generator: torch.Generator) -> None:
    """The fast path of ``divide`` equals IEEE division bit for bit on its domain: every bf16
    significand and random float32 numerators (signed zeros included, magnitudes down to
    about FAST_DIVISION_MIN) over divisors of E4M3 significands times random tensor scales and
    random float32 divisors, quotients near 1, 6 and the E2M1 midpoints included."""
    n = 1 << 18
    bf16 = (torch.arange(1 << 7, dtype=torch.int32) | 0x3F80).to(torch.int16).view(torch.bfloat16).float()
    x = torch.cat([bf16.repeat(n // 128 // 2), torch.randn(n // 2, generator=generator)])
    x = x * torch.exp2(torch.randint(-90, 60, (n,), generator=generator).float())
    x[torch.randint(0, n, (64,), generator=generator)] = 0.0
    x = torch.where(torch.rand(n, generator=generator) < 0.5, -x, x)
    e4m3 = torch.arange(1, 127, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    s_b = e4m3[torch.randint(0, e4m3.numel(), (n,), generator=generator)]
    # 1 - rand lies in (0, 1]: rand itself can be exactly 0, a zero divisor outside the domain.
    d = torch.where(
        torch.rand(n, generator=generator) < 0.5,
        s_b * (1 - torch.rand(n, generator=generator)) * torch.exp2(torch.randint(-50, 50, (n,), generator=generator)),
        torch.rand(n, generator=generator) + 0.5,
    )
    near = torch.tensor([0.25, 0.75, 1.0, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])
    pick = torch.randint(0, n, (n // 8,), generator=generator)
    x[pick] = near[torch.randint(0, near.numel(), (n // 8,), generator=generator)] * d[pick]
    x[pick] = torch.nextafter(x[pick], torch.where(torch.rand(n // 8, generator=generator) < 0.5, 0.0, 100.0))
    # Keep the documented domain: numerators 0 or of magnitude >= FAST_DIVISION_MIN, normal
    # divisors, quotients normal and finite; draws outside it become a quotient of 1.
    q = x.double() / d.double()
    smallest_normal = torch.finfo(torch.float32).tiny
    inside = (x == 0) | ((x.abs() >= FAST_DIVISION_MIN.value) & (q.abs() >= smallest_normal) & (q.abs() < 2.0**127))
    inside &= (d >= smallest_normal) & (1 / d.double() >= smallest_normal)
    x = torch.where(inside, x, d)
    fast, exact = torch.empty(n), torch.empty(n)
    _division_kernel[(1,)](x, d, fast, exact, n, BLOCK=n)
    assert torch.equal(exact.view(torch.int32), (x / d).view(torch.int32))
    bad = fast.view(torch.int32) != exact.view(torch.int32)
    assert not bad.any(), (x[bad][:8], d[bad][:8], fast[bad][:8], exact[bad][:8])


def _amax_check(generator: torch.Generator) -> None:
    """The tensor amax with its maximum planted anywhere, NaN counting as +inf; the flag of
    numerators too small for the fast division."""
    x = torch.randn(9000 + int(torch.randint(0, 200, (1,), generator=generator)), generator=generator)
    where = torch.randint(0, x.numel(), (3,), generator=generator).tolist()
    x[where[0]] = -50.0
    assert tensor_stats(x).tolist() == [50.0, 0.0]
    assert tensor_stats(torch.zeros(5000)).tolist() == [0.0, 0.0]
    assert tensor_stats(torch.full((5000,), -FAST_DIVISION_MIN.value)).tolist() == [FAST_DIVISION_MIN.value, 0.0]
    x[where[2]] = FAST_DIVISION_MIN.value / 2
    assert tensor_stats(x).tolist() == [50.0, 1.0]
    x[where[1]] = float("nan")
    assert tensor_amax(x).item() == float("inf")


def forward_quantize(generator: torch.Generator) -> None:
    _amax_check(generator)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for four_over_six in (False, True):
            for rows, cols in ((37, 272), (64, 128)):
                x = _inputs(rows, cols, dtype, generator)
                k = quantize(x, four_over_six=four_over_six, unscaled_bf16=True)
                ref = (quantize_four_over_six if four_over_six else quantize_rtn)(x)
                assert_same_fp4(k.fp4, ref)
                assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())
    x = _inputs(48, 64, torch.float32, generator).T
    assert_same_fp4(quantize(x, four_over_six=True).fp4, quantize_four_over_six(x))
    # The exact-division path: a numerator below FAST_DIVISION_MIN, or a tensor scale outside
    # FAST_DIVISION_SCALE_MIN..MAX.
    for scale in (1.0, 1e-30, 1e30):
        x = _inputs(32, 64, torch.float32, generator) * scale
        x[3, :16] *= 1e-25
        for four_over_six in (False, True):
            ref = (quantize_four_over_six if four_over_six else quantize_rtn)(x)
            assert_same_fp4(quantize(x, four_over_six=four_over_six).fp4, ref)
    for dtype in (torch.float32, torch.bfloat16):  # 16x16 tiles (the nvidia recipe's weights)
        x = _inputs(48, 272, dtype, generator)
        x[16:32] *= 1e-3  # tiles of very different magnitudes, one block of a tile far below its max
        k = quantize(x, tile_2d=True, unscaled_bf16=True)
        assert_same_fp4(k.fp4, quantize_rtn_2d(x))
        assert torch.equal(k.unscaled_bf16.float(), quantize_rtn_2d(x).dequantize_unscaled())
    q = quantize(_inputs(40, 96, torch.float32, generator), four_over_six=True).fp4
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        assert torch.equal(dequantize_unscaled(q, dtype=dtype).float(), q.dequantize_unscaled())
        assert torch.equal(dequantize_unscaled(q, transpose=True, dtype=dtype).float(), q.dequantize_unscaled().T)
    zero = quantize(torch.zeros(16, 32)).fp4
    assert zero.tensor_scale.item() == 1.0 and not zero.dequantize().any()
    bad = _inputs(16, 32, torch.float32, generator)
    bad[2, 3] = float("nan")
    assert quantize(bad).fp4.dequantize().isnan().all()
    forward_pairs(generator)


def forward_pairs(generator: torch.Generator) -> None:
    """The forward's two operands in one launch per pass are bit for bit the separate calls:
    partial row and column tiles in both, a strided input, one operand on the exact-division
    path, codes for the input or not, and an empty input."""
    weight = _inputs(40, 272, torch.float32, generator).bfloat16()
    tiny_weight = weight * 1e-30
    for x, w, x_codes in (
        (_inputs(37, 272, torch.float32, generator).bfloat16(), weight, True),
        (_inputs(272, 64, torch.float32, generator).bfloat16().T, tiny_weight, False),
        (torch.empty(0, 272, dtype=torch.bfloat16), weight, True),
    ):
        for four_over_six in (False, True):
            pair = quantize_pair(x, w, four_over_six=four_over_six, x_codes=x_codes, unscaled_bf16=True)
            separate = (
                quantize(x, four_over_six=four_over_six, codes=x_codes, unscaled_bf16=True),
                quantize(w, four_over_six=four_over_six, unscaled_bf16=True),
            )
            for together, alone in zip(pair, separate, strict=True):
                assert_same_quantized(together, alone)


def check_random_rotation(n: int, generator: torch.Generator) -> None:
    """``random_rotation`` is ``D H`` with random signs (read back from its first column, where
    ``H`` is 1), the same for the same seed and zeroes its scratch in the same launch."""
    seed, other = torch.randint(0, 2**62, (2,), generator=generator)
    scratch = torch.full((5, 2), float("nan"))
    rotation = random_rotation(n, seed, zero=scratch)
    signs = rotation[:, 0].float()
    assert set(signs.tolist()) <= {-1.0, 1.0} and torch.equal(rotation, rotation_matrix(signs))
    assert torch.equal(scratch, torch.zeros(5, 2))
    assert torch.equal(random_rotation(n, seed), rotation)
    if n >= 16:
        assert not torch.equal(random_rotation(n, other), rotation)


@triton.jit
def _block_draws_kernel(seed_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Uniform ``b`` = output ``b % 4`` of Philox at offset ``b // 4``, element by element."""
    b = tl.arange(0, BLOCK)
    u0, u1, u2, u3 = tl.rand4x(tl.load(seed_ptr), (b // 4).to(tl.uint32))
    k = b % 4
    tl.store(out_ptr + b, tl.where(k == 0, u0, tl.where(k == 1, u1, tl.where(k == 2, u2, u3))), mask=b < n)


def block_draws(seed: torch.Tensor, n: int) -> torch.Tensor:
    """The MS-EDEN kernel's documented uniforms of ``n`` blocks in row-major block order."""
    out = torch.empty(n, dtype=torch.float32)
    _block_draws_kernel[(1,)](seed, out, n, BLOCK=triton.next_power_of_2(n))
    return out


def ms_eden_stage(generator: torch.Generator) -> None:
    signs = random_signs(128, generator, torch.device("cpu"))
    rotation = rotation_matrix(signs)
    assert torch.equal(rotation, (signs[:, None] * sylvester_pm1(128)).bfloat16())
    for n in (1, 2, 16, 512):  # the in-kernel parity against the tensor-op Sylvester matrix
        small = random_signs(n, generator, torch.device("cpu"))
        assert torch.equal(rotation_matrix(small), (small[:, None] * sylvester_pm1(n)).bfloat16())
        check_random_rotation(n, generator)
    seed = torch.randint(0, 2**62, (), generator=generator)
    g = _inputs(64, 256, torch.float32, generator)
    packed = quantize(_inputs(128, 48, torch.float32, generator), four_over_six=True).fp4
    tiny = (g * 1e-25).bfloat16()  # tensor scale below FAST_DIVISION_SCALE_MIN: exact division
    cases = [
        (g.bfloat16(), False, g.bfloat16().float()),
        (tiny, False, tiny.float()),
        (g.T.contiguous(), True, g),
        (packed, True, packed.dequantize(torch.float32).T),
    ]
    for operand, transpose, exact in cases:
        debug: dict[str, torch.Tensor] = {}
        k = ms_eden(operand, rotation, seed, transpose=transpose, unscaled_bf16=True, debug=debug)
        ref_rotated = rht(exact, signs)
        assert (debug["rotated"] - ref_rotated).norm() <= 1e-6 * ref_rotated.norm()
        ref = quantize_ms_eden_rotated(debug["rotated"], uniforms=debug["uniforms"])
        assert_same_fp4(k.fp4, ref)
        assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())
        assert torch.equal(debug["uniforms"].flatten(), block_draws(seed, debug["uniforms"].numel()))
    ms_eden_gemm_launches(rotation, generator)
    ms_eden_row_tiles(rotation, seed, generator)
    again: dict[str, torch.Tensor] = {}
    ms_eden(g.bfloat16(), rotation, seed, debug=again)
    other: dict[str, torch.Tensor] = {}
    ms_eden(g.bfloat16(), rotation, seed + 1, debug=other)
    assert not torch.equal(again["uniforms"], other["uniforms"]), "the seed must change the draws"


def ms_eden_row_tiles(rotation: torch.Tensor, seed: torch.Tensor, generator: torch.Generator) -> None:
    """Programs that take several row tiles (``tiles_per_program``: 80 rows in tiles of 16 make
    five per column group, so the last program's second tile lies past the end) compute what
    one tile per program computes, bit for bit, amax and the tiny-value flag included (the
    amax pass publishes a program's statistics once, after its last tile: here rows 32-47, the
    first of the second program's two tiles, are the only ones whose rotated values are that
    small); also where the two passes split the rows differently (tiles per program or tile
    heights that differ between the passes)."""
    g = _inputs(80, 256, torch.float32, generator)
    g[32:48] *= 1e-31
    g = g.bfloat16()
    launches = [(128, 1, 128, 1), (16, 4, 16, 4), (16, 4, 16, 1), (16, 1, 16, 4), (16, 4, 128, 1)]
    for transpose in (False, True):
        results = []
        for amax_rows, amax_tiles, quantize_rows, quantize_tiles in launches:
            with (
                configs.override("ms_eden_amax", {"BLOCK_R": amax_rows, "MAX_TILES": amax_tiles}),
                configs.override("ms_eden_quantize", {"BLOCK_R": quantize_rows, "MAX_TILES": quantize_tiles}),
            ):
                stats = torch.zeros(1, 2)
                q = ms_eden(g if not transpose else g.T.contiguous(), rotation, seed, transpose=transpose,
                            unscaled_bf16=True, stats=stats)  # fmt: skip
                results.append((q, stats))
        (one, one_stats), tiled_results = results[0], results[1:]
        assert one_stats[0, 1] == 1.0, one_stats
        for tiled, tiled_stats in tiled_results:
            assert torch.equal(tiled_stats, one_stats), (one_stats, tiled_stats)
            assert_same_quantized(tiled, one)


def ms_eden_gemm_launches(rotation: torch.Tensor, generator: torch.Generator) -> None:
    """The operands of both backward GEMMs (dgrad: ``g`` and the saved weight; wgrad: ``g^T``
    and the saved input; the saved operands' last row tiles are partial), amax pass of all four
    in one launch (``g`` and ``g^T`` from one read of each 128 x 128 tile, the saved operands in
    programs of two row tiles), quantize pass of all four or of each GEMM's two in one launch, are
    bit for bit four separate launches, amax rows and tensor scales included; so is one GEMM
    alone."""
    g = _inputs(384, 256, torch.float32, generator).bfloat16()
    weight = quantize(_inputs(256, 48, torch.float32, generator), four_over_six=True).fp4
    x = quantize(_inputs(384, 80, torch.float32, generator), four_over_six=True).fp4
    seeds = list(torch.randint(0, 2**62, (4,), generator=generator).unbind())
    operands = [
        Operand(g, seeds[0], False, codes=True, unscaled_bf16=True),
        Operand(weight, seeds[1], True, codes=True, unscaled_bf16=True),
        Operand(g, seeds[2], True, codes=True, unscaled_bf16=True),
        Operand(x, seeds[3], True, codes=True, unscaled_bf16=True),
    ]
    for count, per_launch in ((4, 2), (4, 1), (2, 2)):
        stats, separate_stats = torch.zeros(4, 2), torch.zeros(4, 2)
        gemms = [tuple(operands[i : i + 2]) for i in range(0, count, 2)]
        with (
            configs.override("ms_eden_quantize", {"GEMMS": per_launch}),
            configs.override("ms_eden_amax", {"MAX_TILES": 2}),
        ):
            together = [q for pair in ms_eden_gemms(gemms, rotation, stats) for q in pair]
        options = {"unscaled_bf16": True, "stats": separate_stats}
        separate = [
            ms_eden(op.source, rotation, op.seed, transpose=op.transpose, stats_row=row, **options)
            for row, op in enumerate(operands[:count])
        ]
        assert torch.equal(stats, separate_stats) and stats[:count, 0].min() > 0
        assert torch.equal(stats[count:], torch.zeros(4 - count, 2))
        for launched, alone in zip(together, separate, strict=True):
            assert_same_quantized(launched, alone)


def nvidia_stage(generator: torch.Generator) -> None:
    """The nvidia recipe's backward quantizers: SR of g, RHT-16 + SR of g^T, RHT-16 + RTN of
    x^T, from bf16, fp16 and float32 sources, both division paths; bit-identical after the
    rotation given the kernel's rotated tensor and uniforms."""
    signs = random_signs(16, generator, torch.device("cpu"))
    rotation = rotation_matrix(signs)
    seed = torch.randint(0, 2**62, (), generator=generator)
    g = _inputs(48, 64, torch.float32, generator)
    cases = [
        (g.bfloat16(), False, None),
        (g.bfloat16() * 1e-28, False, None),  # tensor scale below FAST_DIVISION_SCALE_MIN
        (g.bfloat16(), True, rotation),
        (g.half(), True, rotation),
        (g, True, rotation),
    ]
    for operand, transpose, rot in cases:
        exact = (operand.T if transpose else operand).float()
        for stochastic in (True, False):
            debug: dict[str, torch.Tensor] = {}
            k = nvidia_quantize(
                operand,
                seed=seed if stochastic else None,
                rotation=rot,
                transpose=transpose,
                unscaled_bf16=True,
                debug=debug,
            )
            if rot is None:
                assert torch.equal(debug["rotated"], exact)
            else:
                ref_rotated = rht(exact, signs)
                assert (debug["rotated"] - ref_rotated).norm() <= 1e-6 * ref_rotated.norm()
            if stochastic:
                ref = quantize_sr(debug["rotated"], uniforms=debug["uniforms"])
            else:
                ref = quantize_rtn(debug["rotated"])
            assert_same_fp4(k.fp4, ref)
            assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())
    first: dict[str, torch.Tensor] = {}
    nvidia_quantize(g, seed=seed, debug=first)
    again: dict[str, torch.Tensor] = {}
    nvidia_quantize(g, seed=seed, debug=again)
    other: dict[str, torch.Tensor] = {}
    nvidia_quantize(g, seed=seed + 1, debug=other)
    assert torch.equal(first["uniforms"], again["uniforms"])
    assert not torch.equal(first["uniforms"], other["uniforms"]), "the seed must change the draws"
    # Element i takes output i % 4 of Philox at offset i // 4: no two elements share a draw.
    assert first["uniforms"].unique().numel() > 0.99 * first["uniforms"].numel()


def pointer_load_gemm(generator: torch.Generator) -> None:
    """``gemm.load_gemm``'s tiling: edges in all three dimensions (rows past M and N, a
    reduction that is not a whole number of K tiles) and one persistent program walking every
    tile (one "SM" here). The interpreter multiplies fp16 right (not bf16) and truncates casts to
    bf16, so: fp16 operands whose float32 products and sums are exact, and a float32 output,
    which must then equal the float64 product through the epilogue's operations."""
    from quartet_compile.kernels.gemm import load_gemm

    for m, n, k in [(200, 300, 208), (136, 520, 64)]:
        a, b = (
            torch.randint(-6, 7, (rows, k), generator=generator)
            * 2.0 ** torch.randint(-2, 3, (rows, 1), generator=generator)
            for rows in (m, n)
        )
        scale = torch.rand((), generator=generator)
        bias = torch.randn(n, generator=generator).bfloat16()
        out = load_gemm(a.half(), b.half(), scale, scale, torch.float32, bias)
        exact = (a.double() @ b.double().T).float()  # every partial sum is a float32
        assert torch.equal(out, exact * (scale * scale) + bias.float()), (m, n, k)


def linear_routes(generator: torch.Generator) -> None:
    """``kernels.layer`` on both GEMM routes, every quantized recipe: the quantizers write
    codes only for the native Blackwell GEMM and bf16 operands otherwise, and the two routes
    give the same layer. The GEMMs are CPU stand-ins with each route's arithmetic (the
    interpreter has no ``dot_scaled`` and CPU no ``mm`` into float32): float32 products of
    the bf16 operands, and the reference NVFP4 product of the codes."""
    calls = {"native": 0, "bf16": 0}

    def bf16_route(a, b, scale_a, scale_b, out_dtype, bias=None):
        assert a.dtype == b.dtype == torch.bfloat16
        calls["bf16"] += 1
        out = (a.float() @ b.float().T) * (scale_a * scale_b)
        return (out if bias is None else out + bias.float()).to(out_dtype)

    def native_route(a, b, out_dtype, bias=None):
        calls["native"] += 1
        return nvfp4_matmul(a, b, out_dtype, bias)

    layer.unscaled_gemm, layer.dot_scaled_gemm = bf16_route, native_route
    # (K, recipe, native GEMMs per forward + backward, bf16 GEMMs in native mode)
    cases = [
        (256, "quartet2", 3, 0),
        (256, "nvidia", 2, 1),  # the dgrad multiplies by the dequantized 16x16-tile weight
        (256, "fp4-forward", 1, 2),  # a BF16 backward
        (144, "quartet2", 2, 1),  # a forward reduction that is not a multiple of 128
    ]
    for k, recipe, native_calls, bf16_calls in cases:
        numerics = QuartetConfig(recipe=recipe).numerics
        x, w, grad = (_inputs(rows, cols, torch.bfloat16, generator) for rows, cols in ((128, k), (128, k), (128, 128)))
        bias = torch.randn(128, generator=generator).bfloat16()
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        layers = {}
        for native in (False, True):
            calls.update(native=0, bf16=0)
            y, saved = layer.forward(x, w, bias, numerics, native=native)
            dx, dw = layer.backward(
                grad, saved, numerics, dtypes=(torch.float32,) * 2, needs=(True, True), source=seed, native=native
            )
            expected = (native_calls, bf16_calls) if native else (0, native_calls + bf16_calls)
            assert (calls["native"], calls["bf16"]) == expected, (recipe, k, native, calls)
            layers[native] = y.float(), saved, dx, dw
        (y0, saved0, *grads0), (y1, saved1, *grads1) = layers[False], layers[True]
        for fp4 in ("xq", "wq"):
            if getattr(saved0, fp4) is not None:
                assert_same_fp4(getattr(saved1, fp4), getattr(saved0, fp4))
        for bf16, native in ((y0, y1), *zip(grads0, grads1, strict=True)):
            assert torch.isfinite(native).all()
            assert ((native - bf16).norm() / bf16.norm()).item() < 1e-5, (recipe, k)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    # A seed printed by a failure replays it: python tests/interpreted_kernel_checks.py CHECK SEED
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else int.from_bytes(os.urandom(4), "little")
    try:
        globals()[sys.argv[1]](torch.Generator().manual_seed(seed))
    except AssertionError:
        print(f"{sys.argv[1]} failed with seed {seed}", file=sys.stderr)
        raise
