"""Random Hadamard transform (RHT) over contiguous groups of the last dimension (SPEC 3.1)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sylvester_pm1(n: int, device: torch.device | str | None = None) -> Tensor:
    """The +-1 Sylvester matrix, ``H[i, j] = (-1)^popcount(i & j)``, built with device ops:
    no host-to-device copy and no cached tensor, so it is safe inside CUDA-graph capture."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two, got {n}")
    idx = torch.arange(n, device=device)
    both = idx[:, None] & idx[None, :]
    parity = torch.zeros_like(both)
    for bit in range(n.bit_length() - 1):
        parity ^= (both >> bit) & 1
    return 1.0 - 2.0 * parity.float()


def hadamard_matrix(n: int, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal Sylvester Hadamard matrix ``H / sqrt(n)`` in float32."""
    return sylvester_pm1(n, device) * n**-0.5


def rht(x: Tensor, signs: Tensor) -> Tensor:
    """``x -> x @ (D H)`` on each contiguous group of ``len(signs)`` along the last dim.

    Computed in float32 as a +-1 product followed by one multiply by ``1/sqrt(n)``, so
    the rotation is orthogonal up to float32 rounding. Applying the same ``signs`` to
    both operands of a product cancels the rotation: ``(a D H)(b D H)^T = a b^T``.
    """
    n = signs.numel()
    if x.shape[-1] % n:
        raise ValueError(f"RHT-{n} needs the last dimension to be a multiple of {n}, got {x.shape[-1]}")
    groups = x.float().unflatten(-1, (x.shape[-1] // n, n)) * signs.to(device=x.device, dtype=torch.float32)
    rotated = groups @ sylvester_pm1(n, x.device)
    return (rotated * (1.0 / math.sqrt(n))).flatten(-2)


def inverse_rht(y: Tensor, signs: Tensor) -> Tensor:
    """Undo :func:`rht`: ``y -> y @ (D H)^T = (y @ H) * signs`` per group (``H`` is symmetric)."""
    return rht(y, torch.ones_like(signs)) * signs.to(device=y.device, dtype=torch.float32).repeat(
        y.shape[-1] // signs.numel()
    )
