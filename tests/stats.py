"""Statistical checks shared by the unbiasedness tests."""

import torch
from torch import Tensor

UNBIASED_BOUND = 2.0
"""An unbiased estimator scores about 1 (see :func:`mean_squared_z`); the negative controls
in the tests (RTN, RTN after rotation) land far above it."""


def mean_squared_z(samples: Tensor, exact: Tensor, projections: int = 64) -> float:
    """Mean over random projections of ``((mean - exact) / standard_error)^2``.

    ``samples`` is ``[draws, ...]``. Projecting onto Gaussian directions gives every
    statistic a non-degenerate, near-normal sampling distribution (a single entry that
    rarely moves would fake a zero variance). About 1 for an unbiased estimator, growing
    with the number of draws for a biased one, infinite for a deterministic one that
    misses ``exact``.
    """
    flat = samples.double().flatten(1).cpu()
    directions = torch.randn(
        flat.shape[1], projections, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )
    projected, target = flat @ directions, exact.double().flatten().cpu() @ directions
    bias = projected.mean(0) - target
    standard_error = projected.std(0) / flat.shape[0] ** 0.5
    tiny = 1e-12 * target.abs().max().clamp(min=1e-300)
    z = torch.where(standard_error > tiny, bias / standard_error, torch.where(bias.abs() > tiny, torch.inf, 0.0))
    return float(z.square().mean())
