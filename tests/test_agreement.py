"""The loss-curve agreement test of issue 6: it must accept another seed of the same training
and reject a shifted curve."""

from __future__ import annotations

import os

import pytest
import torch

from quartet_bench.agreement import agreement, distance, seed_noise


def _arm(seeds: range, shift: float, gen: torch.Generator, steps: int = 200) -> dict[int, list[float]]:
    """Curves of one training (a decaying trend) plus per-seed noise that wanders like a loss does."""
    trend = 3.0 * torch.exp(-torch.arange(steps) / 50.0) + 1.5
    curves = {}
    for seed in seeds:
        wander = torch.cumsum(torch.randn(steps, generator=gen), 0) * 0.002 + torch.randn(steps, generator=gen) * 0.01
        curves[seed] = (trend + wander + shift).tolist()
    return curves


def test_distance_counts_only_the_second_half():
    assert distance([9.0, 9.0, 1.0, 2.0], [0.0, 0.0, 1.5, 1.0]) == pytest.approx(0.75)


def test_false_alarms_are_rare_and_a_shift_is_always_caught():
    """The bound is a statistical test: over many simulated pairs of arms drawn from one training,
    it rejects few; an arm shifted by 0.2 it rejects every time."""
    seed = int.from_bytes(os.urandom(4), "little")
    gen = torch.Generator().manual_seed(seed)
    trials = 200
    alarms = sum(not agreement(_arm(range(1, 5), 0.0, gen), _arm(range(1, 5), 0.0, gen)).within for _ in range(trials))
    assert alarms <= 0.05 * trials, f"{alarms} false alarms in {trials} (seed {seed})"
    for _ in range(20):
        shifted = agreement(_arm(range(1, 5), 0.2, gen), _arm(range(1, 5), 0.0, gen))
        # The simulated offset scatters with sd 0.016 around the shift (measured over 4000
        # arms): +-0.1 is six of them, where +-0.05 failed about one run in 40 over 20 draws.
        assert not shifted.within and shifted.offset == pytest.approx(0.2, abs=0.1), f"seed {seed}"


def test_pairs_with_the_same_seed_are_left_out():
    reference = {1: [1.0] * 4, 2: [1.1] * 4}
    arm = {1: [1.0] * 4, 2: [1.1] * 4}  # identical runs per seed: only the cross-seed pairs count
    result = agreement(arm, reference)
    assert result.distance == pytest.approx(0.1) and result.noise == pytest.approx(0.1) and result.within


def test_one_seed_cannot_measure_noise():
    with pytest.raises(ValueError, match="two backward seeds"):
        seed_noise([[1.0, 2.0]])
    with pytest.raises(ValueError, match="different backward seeds"):
        agreement({1: [1.0, 1.0]}, {1: [1.0, 1.0]})
