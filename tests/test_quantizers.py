"""Quantizers (SPEC 2-3): scale rules, 4/6, MS-EDEN unbiasedness and error, edge cases."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from quartet_compile.reference import (
    decode_e2m1,
    hadamard_matrix,
    nvfp4_matmul,
    quantize_four_over_six,
    quantize_ms_eden,
    quantize_rtn,
    quantize_rtn_2d,
    quantize_sr,
    random_signs,
    rht,
    round_to_e2m1,
    unpack_e2m1,
)

from .stats import UNBIASED_BOUND, mean_squared_z

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def fresh(*shape, seed, dist="normal", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen)
    if dist == "heavy":
        x = x * torch.exp(2 * torch.randn(shape, generator=gen))
    return x.to(dtype)


def rel_error(approx, exact):
    """In float64: float32 norms overflow or underflow at the magnitudes tested here."""
    return float((approx.double() - exact.double()).norm() / exact.double().norm())


def block_view(t):
    return t.reshape(-1, t.shape[-1]).float().unflatten(-1, (-1, 16))


def block_sq_error(x, q):
    return (block_view(x) - block_view(q.dequantize(torch.float32))).square().sum(-1)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 8).map(lambda b: 16 * b))
seeds = st.integers(0, 2**31)


@given(shapes, seeds, st.sampled_from(["normal", "heavy"]))
def test_rtn_container_layout_and_nearest_codes(shape, seed, dist):
    x = fresh(*shape, seed=seed, dist=dist)
    q = quantize_rtn(x)
    rows, k = shape
    assert q.codes.shape == (rows, k // 2) and q.codes.dtype == torch.uint8
    assert q.scales.shape == (rows, k // 16) and q.scales.dtype == torch.float8_e4m3fn
    assert q.tensor_scale.dtype == torch.float32 and q.tensor_scale.dim() == 0
    scales = q.scales.float()
    assert bool((scales > 0).all() and (scales <= 448).all())
    expected_ts = x.abs().max() / (6 * 448)
    assert torch.isclose(q.tensor_scale, expected_ts, rtol=1e-6)
    # Each code is the RNE of x / (s_b * s_t), recomputed here from the stored scales.
    u = block_view(x) / (scales * q.tensor_scale).unsqueeze(-1)
    assert torch.equal(unpack_e2m1(q.codes), round_to_e2m1(u).reshape(rows, k))


@given(shapes, seeds, st.sampled_from(["normal", "heavy"]))
def test_rtn_error_is_bounded_by_the_block_scale(shape, seed, dist):
    x = fresh(*shape, seed=seed, dist=dist)
    q = quantize_rtn(x)
    step = (q.scales.float() * q.tensor_scale).unsqueeze(-1)
    err = (block_view(x) - block_view(q.dequantize(torch.float32))).abs()
    normal = (q.scales.float() >= 2**-6).unsqueeze(-1)  # subnormal scales round coarser
    # Half the widest E2M1 gap (4 -> 6) is 1, plus the overshoot of a rounded-down scale.
    assert bool((err <= 1.0 * step * 1.0001 + 1e-30)[normal.expand_as(err)].all())
    assert bool((err <= block_view(x).abs().amax(-1, keepdim=True) * 1.0001 + 1e-30).all())


@given(shapes, seeds, st.sampled_from(["normal", "heavy"]))
def test_four_over_six_never_worse_than_rtn_and_picks_the_minimum(shape, seed, dist):
    x = fresh(*shape, seed=seed, dist=dist)
    q46 = quantize_four_over_six(x)
    q6 = quantize_rtn(x, scale_max=256.0)  # the "6" candidate: same tensor scale, same ceiling
    assert torch.equal(q46.tensor_scale, q6.tensor_scale)
    err46, err6 = block_sq_error(x, q46), block_sq_error(x, q6)
    assert bool((err46 <= err6).all())
    picked_four = q46.scales.float() != q6.scales.float()
    assert torch.equal(err46[~picked_four], err6[~picked_four])


def test_four_over_six_is_used_and_helps_on_gaussian_data():
    x = fresh(256, 1024, seed=7)
    q46, q6 = quantize_four_over_six(x), quantize_rtn(x)
    assert (q46.scales.float() != quantize_rtn(x, scale_max=256.0).scales.float()).float().mean() > 0.1
    assert block_sq_error(x, q46).sum() < 0.9 * block_sq_error(x, q6).sum()


def test_four_over_six_ties_keep_six():
    x = torch.zeros(1, 32)
    x[0, 0] = 3.0  # both candidates represent this block exactly: equal (zero) error
    x[0, 16:] = fresh(16, seed=1)
    q = quantize_four_over_six(x)
    assert q.scales.float()[0, 0] == 256.0  # "6": 3 / 6 / (3 / 1536) = 256; "4" would be 384


def _as_dtype_exact(x, dtype):
    return x.to(torch.bfloat16).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("quantize", [quantize_rtn, quantize_four_over_six, quantize_rtn_2d])
def test_input_dtypes_give_identical_codes(dtype, quantize):
    x = fresh(32, 64, seed=3)
    ref = quantize(_as_dtype_exact(x, torch.float32))
    q = quantize(_as_dtype_exact(x, dtype))
    assert torch.equal(q.codes, ref.codes) and torch.equal(q.scales.float(), ref.scales.float())
    out = q.dequantize()
    assert out.dtype == dtype and out.shape == x.shape and not out.isnan().any()


@given(seeds, st.integers(-100, 100))
def test_power_of_two_rescaling_changes_only_the_tensor_scale(seed, exponent):
    x = fresh(8, 64, seed=seed, dist="heavy")
    q, qs = quantize_four_over_six(x), quantize_four_over_six(x * 2.0**exponent)
    assert torch.equal(q.codes, qs.codes) and torch.equal(q.scales.float(), qs.scales.float())
    assert torch.equal(qs.tensor_scale, q.tensor_scale * 2.0**exponent)


@pytest.mark.parametrize("magnitude", [1e-30, 1e30, 1e37])
def test_extreme_magnitudes_keep_finite_scales(magnitude):
    x = fresh(16, 64, seed=5) * magnitude
    for q in (quantize_rtn(x), quantize_four_over_six(x), quantize_sr(x, source=0)):
        assert torch.isfinite(q.scales.float()).all() and torch.isfinite(q.tensor_scale)
        deq = q.dequantize()
        assert torch.isfinite(deq).all()
        assert rel_error(deq, x) < 0.2


def test_tiny_tensor_scale_is_held_at_the_smallest_normal():
    x = fresh(4, 32, seed=2) * 1e-40
    q = quantize_rtn(x)
    assert q.tensor_scale == torch.finfo(torch.float32).tiny
    assert rel_error(q.dequantize(), x) < 0.2


@pytest.mark.parametrize("quantize", [quantize_rtn, quantize_four_over_six, quantize_sr, quantize_rtn_2d])
def test_all_zero_tensor_gives_zeros_and_no_nan(quantize):
    q = quantize(torch.zeros(16, 64))
    assert q.tensor_scale == 1.0 and bool((q.scales.float() == 1.0).all())
    deq = q.dequantize()
    assert torch.equal(deq, torch.zeros_like(deq)) and not deq.isnan().any()


def test_ms_eden_of_zeros_gives_zeros():
    q = quantize_ms_eden(torch.zeros(4, 128), random_signs(128, 0, "cpu"), source=1)
    assert torch.equal(q.dequantize(), torch.zeros(4, 128))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_input_dequantizes_to_nan(bad, dtype):
    x = fresh(16, 128, seed=4, dtype=dtype)
    x[3, 17] = bad
    signs = random_signs(128, 0, "cpu")
    for q in (quantize_rtn(x), quantize_four_over_six(x), quantize_sr(x, source=0), quantize_ms_eden(x, signs)):
        assert q.tensor_scale.isnan()
        assert q.dequantize().isnan().all()


@pytest.mark.parametrize("k", [8, 24, 100])
def test_k_not_a_multiple_of_16_is_a_clear_error(k):
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_rtn(torch.randn(4, k))
    with pytest.raises(ValueError, match="multiple of 16"):
        quantize_four_over_six(torch.randn(4, k))


def test_ms_eden_needs_groups_of_128():
    with pytest.raises(ValueError, match="multiple of 128"):
        quantize_ms_eden(torch.randn(4, 64), random_signs(128, 0, "cpu"))


def test_rtn_2d_shares_one_scale_per_tile():
    x = fresh(32, 64, seed=6, dist="heavy")
    q = quantize_rtn_2d(x)
    tiles = q.scales.float().unflatten(0, (2, 16))
    assert torch.equal(tiles, tiles[:, :1].expand_as(tiles))
    with pytest.raises(ValueError, match="rows to be a multiple of 16"):
        quantize_rtn_2d(torch.randn(8, 64))


def test_leading_dimensions_are_flattened_and_restored():
    x = fresh(2, 3, 64, seed=8, dtype=torch.bfloat16)
    q = quantize_four_over_six(x)
    assert q.codes.shape == (6, 32)
    assert q.dequantize().shape == x.shape and q.dequantize().dtype == torch.bfloat16


def test_hadamard_rotation_is_orthogonal_and_cancels_in_products():
    h = hadamard_matrix(128)
    assert torch.allclose(h @ h.T, torch.eye(128), atol=1e-6)
    signs = random_signs(128, 3, "cpu")
    a, b = fresh(8, 256, seed=1), fresh(8, 256, seed=2)
    assert torch.allclose(rht(a, signs) @ rht(b, signs).T, a @ b.T, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(rht(a, signs), a)


def test_quantizers_are_reproducible_from_a_seed():
    x = fresh(16, 256, seed=9)
    signs = random_signs(128, 11, "cpu")
    assert torch.equal(random_signs(128, 11, "cpu"), signs)
    a, b = quantize_ms_eden(x, signs, source=5), quantize_ms_eden(x, signs, source=5)
    assert torch.equal(a.scales.float(), b.scales.float()) and torch.equal(a.codes, b.codes)
    c = quantize_ms_eden(x, signs, source=6)
    assert not torch.equal(a.scales.float(), c.scales.float())
    assert torch.equal(quantize_sr(x, source=5).codes, quantize_sr(x, source=5).codes)


def test_explicit_uniforms_replace_the_generator():
    x = fresh(4, 128, seed=10)
    gen = torch.Generator().manual_seed(12)
    uniforms = torch.rand(4, 8, generator=gen)
    signs = random_signs(128, 0, "cpu")
    a = quantize_ms_eden(x, signs, uniforms=uniforms)
    b = quantize_ms_eden(x, signs, source=torch.Generator().manual_seed(12))
    assert torch.equal(a.scales.float(), b.scales.float())
    ones = quantize_ms_eden(x, signs, uniforms=torch.ones(4, 8))  # u=1 never rounds up
    zeros = quantize_ms_eden(x, signs, uniforms=torch.zeros(4, 8))  # u=0 rounds up unless exact
    assert bool((ones.scales.float() <= zeros.scales.float()).all())


def test_ms_eden_scales_include_the_eden_correction():
    x = fresh(4, 256, seed=13)
    signs = random_signs(128, 1, "cpu")
    q = quantize_ms_eden(x, signs, source=2)
    xr = rht(x, signs)
    # EDEN rescales each group so that <x_r, deq> = <x_r, x_r> before the scale rounding;
    # the stochastic E4M3 rounding then moves it by at most one E4M3 step (1/8 relative).
    deq = q.dequantize(torch.float32).unflatten(-1, (-1, 128))
    xr = xr.unflatten(-1, (-1, 128))
    ratio = (xr * deq).sum(-1) / (xr * xr).sum(-1)
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.07)
    rtn = quantize_rtn(x=rht(x, signs), scale_override=(17 / 16) * 0.93, scale_max=256.0)
    assert torch.equal(q.codes, rtn.codes)  # the codes are plain RTN; only the scales move
    rtn_ratio = (xr * rtn.dequantize(torch.float32).unflatten(-1, (-1, 128))).sum(-1) / (xr * xr).sum(-1)
    assert (rtn_ratio - 1).abs().mean() > (ratio - 1).abs().mean()


# ---- unbiasedness: mean over many seeds converges to the exact value -------------------

DRAWS = 300


def test_sr_quantizer_is_unbiased_and_rtn_is_not():
    x = fresh(8, 128, seed=21)
    gen = torch.Generator().manual_seed(22)
    sr = torch.stack([quantize_sr(x, source=gen).dequantize() for _ in range(DRAWS)])
    assert mean_squared_z(sr, x) < UNBIASED_BOUND
    rtn = quantize_rtn(x).dequantize().expand_as(sr)
    assert mean_squared_z(rtn, x) > UNBIASED_BOUND


def _product_estimates(a, b, quantize, gen):
    out = []
    for _ in range(DRAWS):
        signs = random_signs(128, gen, "cpu")
        out.append(nvfp4_matmul(quantize(a, signs, gen), quantize(b, signs, gen), torch.float64))
    return torch.stack(out)


def test_ms_eden_products_are_unbiased_and_rotated_rtn_is_not():
    a = fresh(16, 256, seed=31)
    b = a + 0.5 * fresh(16, 256, seed=32)  # correlated operands: large products, clear bias for RTN
    exact = a.double() @ b.double().T
    gen = torch.Generator().manual_seed(33)
    eden = _product_estimates(a, b, lambda t, s, g: quantize_ms_eden(t, s, source=g), gen)
    assert mean_squared_z(eden, exact) < UNBIASED_BOUND
    rotated_rtn = _product_estimates(a, b, lambda t, s, g: quantize_rtn(rht(t, s), scale_max=256.0), gen)
    assert mean_squared_z(rotated_rtn, exact) > UNBIASED_BOUND
    plain_rtn = nvfp4_matmul(quantize_rtn(a), quantize_rtn(b), torch.float64).expand_as(eden)
    assert mean_squared_z(plain_rtn, exact) > UNBIASED_BOUND


def test_ms_eden_has_over_2x_lower_mse_than_sr_on_gaussian_data():
    x = fresh(256, 1024, seed=41)
    gen = torch.Generator().manual_seed(42)
    signs = random_signs(128, gen, "cpu")
    xr = rht(x, signs)
    eden = (quantize_ms_eden(x, signs, source=gen).dequantize() - xr).square().sum() / xr.square().sum()
    sr = (quantize_sr(x, source=gen).dequantize() - x).square().sum() / x.square().sum()
    assert eden * 2 < sr


def test_e2m1_decode_table():
    assert decode_e2m1(torch.arange(16, dtype=torch.uint8)).tolist() == [
        0.0,
        0.5,
        1.0,
        1.5,
        2.0,
        3.0,
        4.0,
        6.0,
        -0.0,
        -0.5,
        -1.0,
        -1.5,
        -2.0,
        -3.0,
        -4.0,
        -6.0,
    ]


@pytest.mark.gpu
@pytest.mark.parametrize("quantize", [quantize_rtn, quantize_four_over_six, quantize_rtn_2d])
def test_reference_is_bit_identical_on_cuda(quantize):
    x = fresh(256, 512, seed=50, dist="heavy")
    cpu, gpu = quantize(x), quantize(x.cuda())
    assert torch.equal(gpu.codes.cpu(), cpu.codes)
    assert torch.equal(gpu.scales.cpu().float(), cpu.scales.float())
    assert torch.equal(gpu.tensor_scale.cpu(), cpu.tensor_scale)


@pytest.mark.gpu
def test_ms_eden_on_cuda_replays_the_cpu_draws():
    x = fresh(64, 256, seed=51)
    signs = random_signs(128, 3, "cpu")
    uniforms = torch.rand(64, 16, generator=torch.Generator().manual_seed(4))
    cpu = quantize_ms_eden(x, signs, uniforms=uniforms)
    gpu = quantize_ms_eden(x.cuda(), signs.cuda(), uniforms=uniforms.cuda())
    # The rotation sums in a different order on the GPU: codes may differ in rare near-ties.
    assert (gpu.codes.cpu() != cpu.codes).float().mean() < 1e-3
    assert rel_error(gpu.dequantize().cpu(), cpu.dequantize()) < 1e-2


def test_tree_sum_adds_adjacent_pairs_in_a_fixed_order():
    from quartet_compile.reference.quantizers import tree_sum

    t = torch.tensor([1e8, 1.0, -1e8, 1.0], dtype=torch.float32)
    assert tree_sum(t) == (t[0] + t[1]) + (t[2] + t[3])  # = 0: each 1.0 is absorbed by its neighbour
    x = fresh(4, 8, 16, seed=60)
    assert torch.allclose(tree_sum(x, dims=2), x.sum((-1, -2)), rtol=1e-5, atol=1e-5)
