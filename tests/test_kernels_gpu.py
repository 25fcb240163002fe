"""Triton kernels against the reference on a CUDA GPU (marker ``gpu``; skipped on CPU)."""

from __future__ import annotations

import pytest
import torch

from quartet_compile.config import QuartetConfig
from quartet_compile.nvfp4 import Saved
from quartet_compile.ops import route
from quartet_compile.reference import (
    nvfp4_matmul,
    quantize_four_over_six,
    quantize_ms_eden_rotated,
    quantize_rtn,
    quantize_rtn_2d,
    quantize_sr,
    random_signs,
    rht,
)
from quartet_compile.reference.hadamard import sylvester_pm1
from quartet_compile.reference.layer import backward as reference_backward
from quartet_compile.reference.layer import forward as reference_forward

from .fp4_asserts import assert_same_fp4, assert_same_quantized
from .stats import UNBIASED_BOUND, mean_squared_z, two_sample_squared_z

pytestmark = pytest.mark.gpu

QUARTET2, NVIDIA, FP4_FORWARD = (QuartetConfig(recipe=r).numerics for r in ("quartet2", "nvidia", "fp4-forward"))


def _native() -> bool:
    """Whether the layer tests take the native FP4 GEMM route, as the ops would on this GPU."""
    return route(QUARTET2, torch.device("cuda")).native


@pytest.fixture(autouse=True)
def poisoned_allocator():
    """Fill recycled device memory with 0xFF (NaN in every float format) so that an output
    element a kernel forgets to write cannot pass as a stale correct value."""
    if torch.cuda.is_available():
        torch.empty(1 << 28, dtype=torch.uint8, device="cuda").fill_(0xFF)
    yield


def _fresh(rows: int, cols: int, dtype: torch.dtype, spread: float = 3.0) -> torch.Tensor:
    """Gaussian rows with per-column magnitudes spread over ``10**+-spread``: every block has a
    different scale, and some blocks sit near the E4M3 subnormal range."""
    x = torch.randn(rows, cols, device="cuda") * torch.logspace(-spread, spread, cols, device="cuda")
    return x[:, torch.randperm(cols, device="cuda")].to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("four_over_six", [False, True])
@pytest.mark.parametrize("shape", [(1, 16), (77, 48), (256, 4096), (1000, 2064)])
def test_forward_quantize_is_bit_identical(dtype, four_over_six, shape):
    from quartet_compile.kernels.quantize import quantize

    x = _fresh(*shape, dtype)
    k = quantize(x, four_over_six=four_over_six, unscaled_bf16=True)
    ref = (quantize_four_over_six if four_over_six else quantize_rtn)(x)
    assert_same_fp4(k.fp4, ref)
    assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())


def test_forward_quantize_reads_strided_input_and_extreme_magnitudes():
    from quartet_compile.kernels.quantize import quantize

    for scale in (1e-30, 1.0, 1e30):
        x = (_fresh(512, 256, torch.float32) * scale).T  # non-contiguous [256, 512]
        assert_same_fp4(quantize(x, four_over_six=True).fp4, quantize_four_over_six(x))


def test_forward_quantize_zero_and_non_finite():
    from quartet_compile.kernels.quantize import quantize

    zero = quantize(torch.zeros(64, 128, device="cuda"), four_over_six=True).fp4
    assert zero.tensor_scale.item() == 1.0 and torch.equal(zero.dequantize(), torch.zeros(64, 128, device="cuda"))
    for bad in (float("nan"), float("inf")):
        x = _fresh(64, 128, torch.bfloat16)
        x[3, 5] = bad
        assert quantize(x).fp4.dequantize().isnan().all()


@pytest.mark.parametrize("source", ["bf16", "bf16.T", "fp16", "fp32.T", "packed"])
def test_ms_eden_quantization_stage_is_bit_identical(source):
    """Same rotated tensor and same uniforms -> the reference's exact codes and scales; the
    tensor-core rotation itself matches the float32 reference to rounding."""
    from quartet_compile.kernels.ms_eden import ms_eden
    from quartet_compile.kernels.quantize import quantize
    from quartet_compile.kernels.rotation import random_rotation, rotation_matrix

    signs = random_signs(128, None, torch.device("cuda"))
    assert torch.equal(rotation_matrix(signs).float(), signs[:, None] * sylvester_pm1(128, "cuda"))
    seed = torch.randint(0, 2**62, (), device="cuda")
    scratch = torch.full((4, 2), float("nan"), device="cuda")
    drawn = random_rotation(128, seed, zero=scratch)
    assert torch.equal(drawn, rotation_matrix(drawn[:, 0].float())) and not scratch.any()
    seeds = torch.randint(0, 2**62, (64,), device="cuda")
    drawn_signs = torch.stack([random_rotation(128, s)[:, 0].float() for s in seeds])
    assert drawn_signs.mean().abs() < 0.05  # fair signs: 8192 draws, standard error 0.011
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "packed": torch.float32}
    # 400 or 1040 quantized rows: the last program's 64-row tile is partial.
    shape = (400, 1024) if source in ("bf16", "fp16") else (384, 1040)
    x = _fresh(*shape, dtype[source.split(".")[0]], spread=1.0)
    if source == "packed":
        op = quantize(x, four_over_six=True).fp4
        exact = op.dequantize(torch.float32).T
    else:
        op, exact = x, (x.float().T if source.endswith(".T") else x.float())
    debug: dict[str, torch.Tensor] = {}
    k = ms_eden(
        op,
        rotation_matrix(signs),
        seed,
        transpose=source.endswith(".T") or source == "packed",
        unscaled_bf16=True,
        debug=debug,
    )
    ref_rotated = rht(exact, signs)
    assert (debug["rotated"] - ref_rotated).norm() / ref_rotated.norm() < 1e-6
    ref = quantize_ms_eden_rotated(debug["rotated"], uniforms=debug["uniforms"])
    assert_same_fp4(k.fp4, ref)
    assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())
    u = debug["uniforms"]
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("spread_tiles", [False, True])
def test_ms_eden_backward_launches_equal_separate_launches(dtype, spread_tiles):
    """A backward's launches (the amax of ``g`` and ``g^T`` from one read of ``g``, its transpose
    rotated by a second tensor-core product, then the quantize pass of all four operands) write
    what four separate ``ms_eden`` calls write, bit for bit, amax rows included: the hardware
    sums each rotated element the same way in both. With four row tiles per program
    (``spread_tiles``) the saved operands' last programs run past their ends."""
    from quartet_compile.kernels import configs
    from quartet_compile.kernels.ms_eden import Operand, ms_eden, ms_eden_gemms
    from quartet_compile.kernels.quantize import quantize
    from quartet_compile.kernels.rotation import rotation_matrix

    tokens, n, k = 1152, 384, 208
    g = _fresh(tokens, n, dtype)
    weight = quantize(_fresh(n, k, torch.bfloat16), four_over_six=True).fp4
    x = quantize(_fresh(tokens, k, torch.bfloat16), four_over_six=True).fp4
    rotation = rotation_matrix(random_signs(128, None, torch.device("cuda")))
    seeds = list(torch.randint(0, 2**62, (4,), device="cuda").unbind())
    operands = [Operand(g, seeds[0], False, True, True), Operand(weight, seeds[1], True, True, True),
                Operand(g, seeds[2], True, True, True), Operand(x, seeds[3], True, True, True)]  # fmt: skip
    stats, separate_stats = torch.zeros(4, 2, device="cuda"), torch.zeros(4, 2, device="cuda")
    spread = {"MAX_TILES": 4, "PROGRAMS_PER_SM": 0} if spread_tiles else {}
    with configs.override("ms_eden_amax", spread):
        together = [q for pair in ms_eden_gemms([operands[:2], operands[2:]], rotation, stats) for q in pair]
    separate = [
        ms_eden(op.source, rotation, op.seed, transpose=op.transpose, unscaled_bf16=True, stats=separate_stats,
                stats_row=row)
        for row, op in enumerate(operands)
    ]  # fmt: skip
    assert torch.equal(stats, separate_stats) and (stats[:, 0] > 0).all()
    for launched, alone in zip(together, separate, strict=True):
        assert_same_quantized(launched, alone)


def test_ms_eden_kernel_product_is_unbiased_and_rtn_is_not():
    """Mean over draws of the kernel's MS-EDEN product estimate converges to ``a b^T``; the
    negative control (RTN, deterministic) does not."""
    from quartet_compile.kernels.ms_eden import ms_eden
    from quartet_compile.kernels.rotation import rotation_matrix

    a, b = torch.randn(128, 256, device="cuda"), torch.randn(128, 256, device="cuda")
    exact = a.double() @ b.double().T
    draws = []
    for _ in range(256):
        rotation = rotation_matrix(random_signs(128, None, torch.device("cuda")))
        seeds = torch.randint(0, 2**62, (2,), device="cuda")
        draws.append(
            nvfp4_matmul(ms_eden(a, rotation, seeds[0]).fp4, ms_eden(b, rotation, seeds[1]).fp4, torch.float32)
        )
    assert mean_squared_z(torch.stack(draws), exact) < UNBIASED_BOUND
    rtn = nvfp4_matmul(quantize_rtn(a), quantize_rtn(b), torch.float32)
    assert mean_squared_z(torch.stack([rtn] * 16), exact) > 10


def _gemm_operands(m: int, n: int, k: int) -> tuple:
    from quartet_compile.kernels.quantize import quantize

    a, b = (
        quantize(_fresh(m, k, torch.bfloat16, 1.0), unscaled_bf16=True),
        quantize(_fresh(n, k, torch.bfloat16, 1.0), unscaled_bf16=True),
    )
    exact = (a.fp4.dequantize(torch.float64) @ b.fp4.dequantize(torch.float64).T).float()
    return a, b, exact


def _poison_next_output(rows: int, cols: int, dtype: torch.dtype) -> None:
    """Free a NaN-filled block of the output's size, which the caching allocator hands to the
    next ``torch.empty`` of that size: an output tile that a kernel never writes stays NaN."""
    torch.full((rows, cols), float("nan"), dtype=dtype, device="cuda")


@pytest.mark.parametrize(
    "m,n,k",
    [(128, 128, 128), (300, 200, 256), (300, 200, 208), (1000, 384, 1024), (64, 256, 16384), (8, 8, 4096),
     (4096, 2304, 256)],
)  # fmt: skip
@pytest.mark.parametrize("route", ["cublas_gemm", "tma_gemm", "load_gemm"])
def test_gemm_equals_float64_product(m, n, k, route):
    """Every route, on edges of the tiles in all three dimensions (a reduction that is not a
    whole number of K tiles included) and on persistent programs of several tiles."""
    from quartet_compile.kernels import gemm as routes

    a, b, exact = _gemm_operands(m, n, k)
    bias = torch.randn(n, device="cuda")

    def run(out_dtype, bias=None):
        _poison_next_output(m, n, out_dtype)
        gemm = getattr(routes, route)
        return gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, out_dtype, bias)

    out = run(torch.float32, bias)
    expected = exact + bias
    assert torch.isfinite(out).all()
    assert ((out - expected).norm() / expected.norm()).item() < 1e-5
    out_bf16 = run(torch.bfloat16)
    assert ((out_bf16.float() - exact).norm() / exact.norm()).item() < 4e-3


def test_unscaled_gemm_takes_tma_where_it_can_and_cublas_elsewhere():
    """The router: TMA for aligned row-major operands on Hopper, cuBLAS for a transposed
    operand view or output rows that are not 16-byte aligned; the same product either way.
    (The (4096, 2304) case of the test above gives each persistent TMA program several tiles.)"""
    from quartet_compile.kernels.gemm import tma_compatible, unscaled_gemm

    for n, out_dtype, transposed, expect_tma in [
        (256, torch.bfloat16, False, True),
        (12, torch.bfloat16, False, False),
        (12, torch.float32, False, True),
        (256, torch.bfloat16, True, False),
    ]:
        a, b, exact = _gemm_operands(192, n, 512)
        b_unscaled = b.unscaled_bf16.T.contiguous().T if transposed else b.unscaled_bf16
        capable = torch.cuda.get_device_capability() >= (9, 0)
        assert tma_compatible(a.unscaled_bf16, b_unscaled, out_dtype) == (expect_tma and capable)
        out = unscaled_gemm(a.unscaled_bf16, b_unscaled, a.tensor_scale, b.tensor_scale, out_dtype).float()
        tolerance = 1e-5 if out_dtype == torch.float32 else 4e-3
        assert ((out - exact).norm() / exact.norm()).item() < tolerance


def test_unscaled_gemm_sends_outputs_with_few_tiles_to_cublas(monkeypatch):
    """A weight-gradient-like product (small output, long reduction) takes the cuBLAS route,
    a large output the TMA GEMM; both equal the float64 product to float32 accumulation."""
    from quartet_compile.kernels import gemm

    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the TMA GEMM needs sm_90+")
    taken = []
    for name in ("tma_gemm", "cublas_gemm"):
        route = getattr(gemm, name)
        monkeypatch.setattr(gemm, name, lambda *args, route=route, name=name: taken.append(name) or route(*args))
    for m, n, k, expected in [(256, 512, 8192, "cublas_gemm"), (4096, 4096, 256, "tma_gemm")]:
        a, b, exact = _gemm_operands(m, n, k)
        assert gemm.fills_device(m, n, a.unscaled_bf16.device) == (expected == "tma_gemm")
        _poison_next_output(m, n, torch.float32)
        out = gemm.unscaled_gemm(a.unscaled_bf16, b.unscaled_bf16, a.tensor_scale, b.tensor_scale, torch.float32)
        assert taken.pop() == expected
        assert torch.isfinite(out).all()
        assert ((out - exact).norm() / exact.norm()).item() < 1e-5


@pytest.mark.parametrize("m,n,k", [(128, 128, 128), (300, 200, 256), (1000, 384, 1024), (64, 256, 16384), (8, 8, 4096)])
def test_native_blackwell_gemm_equals_float64_product(m, n, k):
    """The block-scaled GEMM that CI only compiles. Not yet run: no Blackwell GPU
    has been available. On one, this and the linear tests below (which then take the native
    route, :func:`kernels.layer.operands`) are the check of the Blackwell path."""
    from quartet_compile.kernels import blackwell

    if torch.cuda.get_device_capability()[0] not in blackwell.NATIVE_MAJORS:
        pytest.skip("the native NVFP4 GEMM runs on Blackwell (sm_100/103, sm_120/121) only")
    assert blackwell.native_gemm_available(torch.device("cuda")), "the first-use check failed (see the warning)"
    a, b, exact = _gemm_operands(m, n, k)
    bias = torch.randn(n, device="cuda")
    _poison_next_output(m, n, torch.float32)
    out = blackwell.dot_scaled_gemm(a.fp4, b.fp4, torch.float32, bias)
    assert torch.isfinite(out).all()
    assert ((out - (exact + bias)).norm() / (exact + bias).norm()).item() < 1e-5


@pytest.mark.parametrize("config", [QUARTET2, NVIDIA], ids=["quartet2", "nvidia"])
def test_kernel_linear_forward_matches_reference(config):
    """Bit-identical saved FP4 operands (``nvidia`` saves ``x`` itself and 16x16-tile weights)."""
    from quartet_compile.kernels.layer import forward as linear_forward

    x, w, bias = (
        _fresh(512, 384, torch.bfloat16, 1.0),
        _fresh(256, 384, torch.bfloat16, 1.0),
        torch.randn(256, device="cuda"),
    )
    y, saved = linear_forward(x, w, bias.bfloat16(), config, native=_native())
    y_ref, saved_ref = reference_forward(x, w, bias.bfloat16(), config)
    if config is NVIDIA:
        assert saved.x is x and saved.xq is None
    else:
        assert_same_fp4(saved.xq, saved_ref.xq)
    assert_same_fp4(saved.wq, saved_ref.wq)
    assert ((y.float() - y_ref.float()).norm() / y_ref.float().norm()).item() < 4e-3


def test_kernel_linear_backward_is_unbiased():
    """Mean over backward calls of the kernel dgrad/wgrad equals the exact gradient of the
    quantized forward: ``g deq(Wq)`` and ``g^T deq(xq)``."""
    from quartet_compile.kernels.layer import backward as linear_backward
    from quartet_compile.kernels.quantize import quantize

    xq = quantize(torch.randn(256, 128, device="cuda"), four_over_six=True).fp4
    wq = quantize(torch.randn(128, 128, device="cuda"), four_over_six=True).fp4
    g = torch.randn(256, 128, device="cuda")
    dxs, dws = [], []
    for _ in range(200):
        dx, dw = linear_backward(
            g, Saved(xq=xq, wq=wq), QUARTET2, dtypes=(torch.float32,) * 2, source=None, native=_native()
        )
        dxs.append(dx)
        dws.append(dw)
    assert mean_squared_z(torch.stack(dxs), g.double() @ wq.dequantize(torch.float64)) < UNBIASED_BOUND
    assert mean_squared_z(torch.stack(dws), g.double().T @ xq.dequantize(torch.float64)) < UNBIASED_BOUND


def test_kernel_backward_is_reproducible_under_manual_seed_and_graph_capture():
    from quartet_compile.kernels.layer import backward as linear_backward
    from quartet_compile.kernels.quantize import quantize

    saved = Saved(
        xq=quantize(torch.randn(256, 128, device="cuda")).fp4, wq=quantize(torch.randn(128, 128, device="cuda")).fp4
    )
    g = torch.randn(256, 128, device="cuda")

    def step():
        return linear_backward(g, saved, QUARTET2, dtypes=(torch.bfloat16,) * 2, source=None, native=_native())

    torch.manual_seed(1)
    first = step()
    torch.manual_seed(1)
    again = step()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    step()  # warm up (Triton compiles outside the capture)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    graph.replay()
    one = [t.clone() for t in captured]
    graph.replay()
    assert all(torch.isfinite(t).all() for t in one)
    assert not torch.equal(one[0], captured[0])  # each replay draws new signs and seeds


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(16, 16), (48, 272), (256, 4096), (1024, 2064)])
def test_tile_2d_quantize_is_bit_identical(dtype, shape):
    """The nvidia recipe's weights: one scale per 16x16 tile, tiles of mixed magnitudes."""
    from quartet_compile.kernels.quantize import quantize

    x = _fresh(*shape, dtype)
    x = x * torch.logspace(-2, 2, shape[0], device="cuda")[torch.randperm(shape[0], device="cuda")][:, None].to(dtype)
    k = quantize(x, tile_2d=True, unscaled_bf16=True)
    ref = quantize_rtn_2d(x)
    assert_same_fp4(k.fp4, ref)
    assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 16), (77, 48), (1000, 2064)])
def test_dequantize_unscaled_is_exact(dtype, shape):
    from quartet_compile.kernels.dequantize import dequantize_unscaled
    from quartet_compile.kernels.quantize import quantize

    q = quantize(_fresh(*shape, torch.float32), four_over_six=True).fp4
    assert torch.equal(dequantize_unscaled(q, dtype=dtype).float(), q.dequantize_unscaled())
    transposed = dequantize_unscaled(q, transpose=True, dtype=dtype)
    assert transposed.is_contiguous() and torch.equal(transposed.float(), q.dequantize_unscaled().T)


@pytest.mark.parametrize(
    ("source", "rotate", "stochastic"),
    [
        ("bf16", False, True),
        ("bf16.T", True, True),
        ("fp16.T", True, True),
        ("fp32.T", True, False),
        ("bf16.T", True, False),
    ],
)
def test_nvidia_quantization_stage_is_bit_identical(source, rotate, stochastic):
    """SR of g (dgrad), RHT-16 + SR of g^T and RHT-16 + RTN of x^T (wgrad): the reference's
    codes and scales given the kernel's rotated tensor and uniforms."""
    from quartet_compile.kernels.nvidia import nvidia_quantize
    from quartet_compile.kernels.rotation import rotation_matrix

    signs = random_signs(16, None, torch.device("cuda"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[source.split(".")[0]]
    x = _fresh(384, 1040, dtype, spread=1.0)
    transpose = source.endswith(".T")
    exact = (x.T if transpose else x).float()
    seed = torch.randint(0, 2**62, (), device="cuda") if stochastic else None
    debug: dict[str, torch.Tensor] = {}
    rotation = rotation_matrix(signs) if rotate else None
    k = nvidia_quantize(x, seed=seed, rotation=rotation, transpose=transpose, unscaled_bf16=True, debug=debug)
    ref_rotated = rht(exact, signs) if rotate else exact
    assert (debug["rotated"] - ref_rotated).norm() / ref_rotated.norm() < 1e-6
    if stochastic:
        ref = quantize_sr(debug["rotated"], uniforms=debug["uniforms"])
        u = debug["uniforms"]
        assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean().item() - 0.5) < 0.01
    else:
        ref = quantize_rtn(debug["rotated"])
    assert_same_fp4(k.fp4, ref)
    assert torch.equal(k.unscaled_bf16.float(), ref.dequantize_unscaled())


def test_kernel_nvidia_backward_has_the_reference_distribution():
    """The kernels' nvidia backward draws from the same distribution as the reference's: dgrad
    is unbiased for ``g deq(Wq)``; wgrad (biased by design: RTN of the rotated activation) has
    the reference's expectation. Negative control: the quartet2 backward's wgrad does not."""
    from quartet_compile.kernels.layer import backward as linear_backward
    from quartet_compile.kernels.quantize import quantize

    x = torch.randn(256, 128, device="cuda").bfloat16()
    wq = quantize(torch.randn(128, 128, device="cuda"), tile_2d=True).fp4
    g = torch.randn(256, 128, device="cuda").bfloat16()
    saved = Saved(x=x, wq=wq)
    options = {"dtypes": (torch.float32,) * 2, "needs": (True, True), "source": None}
    kernel = [linear_backward(g, saved, NVIDIA, native=_native(), **options) for _ in range(300)]
    reference = [reference_backward(g, saved, NVIDIA, **options) for _ in range(300)]
    dxs = torch.stack([dx for dx, _ in kernel])
    assert mean_squared_z(dxs, g.double() @ wq.dequantize(torch.float64)) < UNBIASED_BOUND
    dws, dws_ref = torch.stack([dw for _, dw in kernel]), torch.stack([dw for _, dw in reference])
    assert two_sample_squared_z(dws, dws_ref) < UNBIASED_BOUND
    xq = quantize(x.float(), four_over_six=True).fp4
    quartet2 = [linear_backward(g, Saved(xq=xq, wq=wq), QUARTET2, **options)[1] for _ in range(300)]
    assert two_sample_squared_z(torch.stack(quartet2), dws_ref) > 10


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_fp4_forward_backward_is_the_dequantized_product(dtype):
    """fp4-forward: the two high-precision GEMMs on the dequantized saved operands, within
    float32 accumulation of the float64 product (a float32 gradient takes float32 GEMMs)."""
    from quartet_compile.kernels.layer import backward as linear_backward
    from quartet_compile.kernels.quantize import quantize

    xq = quantize(_fresh(384, 256, torch.float32, 1.0), four_over_six=True).fp4
    wq = quantize(_fresh(320, 256, torch.float32, 1.0), four_over_six=True).fp4
    g = _fresh(384, 320, dtype, 1.0)
    _poison_next_output(384, 256, torch.float32)
    dx, dw = linear_backward(
        g, Saved(xq=xq, wq=wq), FP4_FORWARD, dtypes=(torch.float32,) * 2, needs=(True, True), source=None
    )
    for out, exact in (
        (dx, g.double() @ wq.dequantize(torch.float64)),
        (dw, g.double().T @ xq.dequantize(torch.float64)),
    ):
        assert torch.isfinite(out).all()
        assert ((out.double() - exact).norm() / exact.norm()).item() < 1e-5


def _division_mismatches(numerator_bits: torch.Tensor, divisor_bits: torch.Tensor) -> int:
    """Count of (numerator, divisor) pairs, every combination of the two float32 bit-pattern
    lists, where ``divide``'s fast path differs from ``div.rn``. Compared in the kernel: the
    pairs are never written to memory."""
    import triton
    import triton.language as tl

    from quartet_compile.kernels.nvfp4_math import divide

    @triton.jit
    def kernel(x_ptr, d_ptr, n_d, count_ptr, BLOCK: tl.constexpr):
        x = tl.load(x_ptr + tl.program_id(0)).to(tl.float32, bitcast=True)
        j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        d = tl.load(d_ptr + j, mask=j < n_d, other=0x3F800000).to(tl.float32, bitcast=True)
        fast = divide(x, d, tl.math.div_rn(1.0, d), True)
        exact = divide(x, d, 0.0, False)
        wrong = fast.to(tl.int32, bitcast=True) != exact.to(tl.int32, bitcast=True)
        tl.atomic_add(count_ptr, tl.sum(wrong.to(tl.int32), axis=0))

    count = torch.zeros((), dtype=torch.int32, device="cuda")
    grid = (numerator_bits.numel(), triton.cdiv(divisor_bits.numel(), 4096))
    kernel[grid](numerator_bits, divisor_bits, divisor_bits.numel(), count, BLOCK=4096, enable_fp_fusion=False)
    return int(count.item())


def test_fast_division_is_exact_for_every_bf16_numerator_and_divisor_significand():
    """Division is invariant to power-of-two scaling away from under/overflow, so every bf16
    significand (both signs) over every float32 significand covers all bf16 numerators on the
    fast path's domain; float32 numerators are sampled. An overflowing quotient, outside the
    domain, shows that the counter sees a mismatch."""
    significands = 0x3F800000 + torch.arange(1 << 23, dtype=torch.int32, device="cuda")
    bf16 = (torch.arange(1 << 7, dtype=torch.int32, device="cuda") << 16) | 0x3F800000
    bf16 = torch.cat([bf16, bf16 | -0x80000000])
    assert _division_mismatches(bf16, significands) == 0
    fp32 = torch.randint(0x3F800000, 0x40000000, (4096,), dtype=torch.int32, device="cuda")
    assert _division_mismatches(fp32, significands[torch.randperm(1 << 23, device="cuda")[: 1 << 18]]) == 0
    huge = torch.tensor([0x7F400000], dtype=torch.int32, device="cuda")  # 1.5 * 2**127
    assert _division_mismatches(huge, significands[:4096] - (2 << 23)) == 4096  # / [0.25, 0.5)
