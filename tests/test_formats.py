"""E2M1 / E4M3 rounding and packing against independent definitions."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from quartet_compile.nvfp4.format import E2M1_MAGNITUDES
from quartet_compile.reference import (
    decode_e2m1,
    pack_e2m1,
    round_to_e2m1,
    round_to_e4m3,
    stochastic_round_to_e2m1,
    stochastic_round_to_e4m3,
    unpack_e2m1,
)

from .stats import UNBIASED_BOUND, mean_squared_z

GRID = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64)


def nearest_even_by_search(u: torch.Tensor) -> torch.Tensor:
    """Independent E2M1 RNE: argmin distance over the grid, ties to the even code."""
    mag = u.double().abs().clamp(max=6.0)
    dist = (mag.unsqueeze(-1) - GRID).abs()
    best = dist.min(-1, keepdim=True).values
    candidates = dist == best
    even_tie = candidates & (torch.arange(8) % 2 == 0)
    idx = torch.where(even_tie.any(-1), even_tie.float().argmax(-1), candidates.float().argmax(-1))
    return torch.copysign(GRID[idx], u.double())


finite_f32 = arrays(
    "float32", st.integers(1, 256), elements=st.floats(-20, 20, width=32, allow_nan=False, allow_subnormal=True)
)


@given(finite_f32)
def test_e2m1_rounding_is_nearest_with_ties_to_even(values):
    u = torch.from_numpy(values)
    codes = round_to_e2m1(u)
    assert codes.dtype == torch.uint8 and int(codes.max()) < 16
    assert torch.equal(decode_e2m1(codes).double(), nearest_even_by_search(u))


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.25, 0.0),
        (0.75, 1.0),
        (1.25, 1.0),
        (1.75, 2.0),
        (2.5, 2.0),
        (3.5, 4.0),
        (5.0, 4.0),
        (5.01, 6.0),
        (7.0, 6.0),
        (1e30, 6.0),
        (-2.5, -2.0),
        (-5.0, -4.0),
        (-0.1, -0.0),
        (0.0, 0.0),
    ],
)
def test_e2m1_spec_table(value, expected):
    got = decode_e2m1(round_to_e2m1(torch.tensor([value])))
    assert got.item() == expected and torch.signbit(got).item() == (str(expected)[0] == "-")


@given(st.integers(1, 8), st.integers(1, 32).map(lambda k: 2 * k), st.integers(0, 2**31))
def test_pack_unpack_round_trip(rows, k, seed):
    codes = torch.randint(0, 16, (rows, k), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    packed = pack_e2m1(codes)
    assert packed.shape == (rows, k // 2) and packed.dtype == torch.uint8
    assert torch.equal(unpack_e2m1(packed), codes)


def test_pack_puts_even_element_in_low_nibble():
    assert pack_e2m1(torch.tensor([0x1, 0xA], dtype=torch.uint8)).item() == 0xA1
    with pytest.raises(ValueError, match="even"):
        pack_e2m1(torch.zeros(3, dtype=torch.uint8))


def _e4m3_probe_values() -> torch.Tensor:
    """Every E4M3 value, every midpoint between neighbours and the float32 values just
    beside each (where a wrong tie rule or an off-by-one exponent shows), plus a log-uniform
    sweep from deep subnormals to beyond the saturation point."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    mids = (codes[1:] + codes[:-1]) / 2
    edges = torch.cat([codes, mids, torch.tensor([464.0, 480.0, 1e6])])
    around = torch.cat([edges, torch.nextafter(edges, torch.tensor(0.0)), torch.nextafter(edges, torch.tensor(1e9))])
    sweep = torch.exp(torch.empty(200_000).uniform_(-25, 8))
    values = torch.cat([around, sweep])
    return torch.cat([values, -values])


def test_e4m3_rne_matches_torch_cast_everywhere():
    """Up to the saturation point: beyond 464 (where RNE leaves 448), torch 2.11 casts to NaN
    and torch 2.13 saturates; ours saturates (next test)."""
    x = _e4m3_probe_values()
    x = x[x.abs() < 464]
    assert torch.equal(round_to_e4m3(x), x.to(torch.float8_e4m3fn).float())


def test_e4m3_rne_saturates_and_keeps_nan():
    out = round_to_e4m3(torch.tensor([float("inf"), -1e9, float("nan")]))
    assert out[:2].tolist() == [448.0, -448.0] and out[2].isnan()


def test_stochastic_e4m3_picks_a_neighbour_and_is_unbiased():
    gen = torch.Generator().manual_seed(0)
    x = torch.exp(torch.empty(64).uniform_(-8, 6, generator=gen))
    draws = torch.stack([stochastic_round_to_e4m3(x, torch.rand(64, generator=gen)) for _ in range(400)])
    lo, hi = draws.min(0).values, draws.max(0).values
    assert torch.equal(round_to_e4m3(draws), draws)
    assert bool((lo <= x).all() and (x <= hi).all())
    assert torch.all((hi == lo) | (torch.nextafter(lo, hi) <= hi))
    assert mean_squared_z(draws, x) < UNBIASED_BOUND
    assert mean_squared_z(round_to_e4m3(x).expand_as(draws), x) > UNBIASED_BOUND  # negative control


def test_stochastic_e4m3_is_exact_on_grid_values():
    x = torch.arange(1, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    assert torch.equal(stochastic_round_to_e4m3(x, torch.full_like(x, 0.999999)), x)


def test_stochastic_e2m1_is_unbiased_inside_the_range():
    gen = torch.Generator().manual_seed(1)
    u = torch.empty(256).uniform_(-6, 6, generator=gen)
    draws = torch.stack([decode_e2m1(stochastic_round_to_e2m1(u, torch.rand(256, generator=gen))) for _ in range(400)])
    assert mean_squared_z(draws, u) < UNBIASED_BOUND
    assert mean_squared_z(decode_e2m1(round_to_e2m1(u)).expand_as(draws), u) > UNBIASED_BOUND
    below = torch.tensor(E2M1_MAGNITUDES)[(torch.bucketize(u.abs(), torch.tensor(E2M1_MAGNITUDES), right=True) - 1)]
    assert bool(((draws.abs() - below).abs() < 2.0 + 1e-6).all())
