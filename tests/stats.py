"""Statistical checks shared by the unbiasedness tests."""

import torch
from torch import Tensor

UNBIASED_BOUND = 2.0
"""An unbiased estimator scores about 1 (see :func:`mean_squared_z`); the negative controls
in the tests (RTN, RTN after rotation) land far above it."""


def _projections(n: int, projections: int) -> Tensor:
    return torch.randn(n, projections, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def mean_squared_z(samples: Tensor, exact: Tensor, projections: int = 64) -> float:
    """Mean over random projections of ``((mean - exact) / standard_error)^2``.

    ``samples`` is ``[draws, ...]``. Projecting onto Gaussian directions gives every
    statistic a non-degenerate, near-normal sampling distribution (a single entry that
    rarely moves would fake a zero variance). About 1 for an unbiased estimator, growing
    with the number of draws for a biased one, infinite for a deterministic one that
    misses ``exact``.
    """
    flat = samples.double().flatten(1).cpu()
    directions = _projections(flat.shape[1], projections)
    projected, target = flat @ directions, exact.double().flatten().cpu() @ directions
    bias = projected.mean(0) - target
    standard_error = projected.std(0) / flat.shape[0] ** 0.5
    tiny = 1e-12 * target.abs().max().clamp(min=1e-300)
    z = torch.where(standard_error > tiny, bias / standard_error, torch.where(bias.abs() > tiny, torch.inf, 0.0))
    return float(z.square().mean())


def two_sample_squared_z(first: Tensor, second: Tensor, projections: int = 64) -> float:
    """Like :func:`mean_squared_z`, for two sets of draws ``[draws, ...]`` of estimators that
    should share one expectation: about 1 if they do, growing with the draws if not."""
    a, b = (s.double().flatten(1).cpu() for s in (first, second))
    directions = _projections(a.shape[1], projections)
    pa, pb = a @ directions, b @ directions
    standard_error = (pa.var(0) / a.shape[0] + pb.var(0) / b.shape[0]).sqrt()
    return float(((pa.mean(0) - pb.mean(0)) / standard_error).square().mean())
