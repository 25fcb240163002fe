"""Do two sets of training runs follow the same loss curve, up to the noise of the stochastic
backward? The test of issue 6 (distributed vs one GPU), usable for any two arms of runs that
share initial weights and data order and differ in their backward seeds.

``distance(a, b)`` is the mean ``|loss_a - loss_b|`` over the second half of the steps (past the
warm-up transient). The *noise* of the reference arm is the mean distance between its runs with
different seeds; an arm *agrees* with the reference when its mean distance to the reference's
runs of the other seeds is at most ``factor`` times that noise. Pairs with the same seed are left
out on both sides: rank 0 of a distributed run replays part of the one-GPU random stream, which
would make such a pair closer than chance.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Curve = Sequence[float]


def distance(a: Curve, b: Curve) -> float:
    """Mean ``|a - b|`` over the second half of the steps."""
    half = len(a) // 2
    pairs = list(zip(a[half:], b[half:], strict=True))
    return sum(abs(x - y) for x, y in pairs) / len(pairs)


def tail_mean(curve: Curve) -> float:
    """Mean loss over the second half: the level whose shift ``Agreement.offset`` reports."""
    return statistics.fmean(curve[len(curve) // 2 :])


@dataclass(frozen=True)
class Agreement:
    distance: float
    """Mean distance from the arm's runs to the reference's runs of other seeds."""
    noise: float
    """Mean distance between the reference's runs of different seeds."""
    bound: float
    offset: float
    """Mean tail loss of the arm minus the reference's: a systematic shift, signed."""
    offset_sd: float
    """Seed-to-seed standard deviation of the reference's tail loss, the scale of ``offset``."""

    @property
    def within(self) -> bool:
        return self.distance <= self.bound


def seed_noise(runs: Sequence[Curve]) -> float:
    """Mean distance over every pair of runs (which differ only in their backward seed)."""
    if len(runs) < 2:
        raise ValueError("the noise of an arm needs runs with at least two backward seeds")
    return statistics.fmean(distance(a, b) for a, b in itertools.combinations(runs, 2))


def agreement(arm: dict[int, Curve], reference: dict[int, Curve], factor: float = 2.0) -> Agreement:
    """Compare ``arm`` with ``reference``, both keyed by backward seed."""
    cross = [distance(arm[i], reference[j]) for i in arm for j in reference if i != j]
    if not cross:
        raise ValueError("no pair of runs with different backward seeds to compare")
    noise = seed_noise(list(reference.values()))
    tails = [tail_mean(c) for c in reference.values()]
    return Agreement(
        distance=statistics.fmean(cross),
        noise=noise,
        bound=factor * noise,
        offset=statistics.fmean(tail_mean(c) for c in arm.values()) - statistics.fmean(tails),
        offset_sd=statistics.stdev(tails),
    )
