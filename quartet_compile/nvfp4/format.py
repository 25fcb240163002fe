"""The NVFP4 format (SPEC section 1): E2M1 element codes packed two per byte, one E4M3 scale per
16 elements along the last dimension, one float32 tensor scale, and the container holding them."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BLOCK = 16
"""Elements per E4M3 block scale, along the last (reduction) dimension."""
E2M1_MAX = 6.0
E4M3_MAX = 448.0
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
"""Magnitude of E2M1 codes 0..7; code | 8 is the negative."""


def e2m1_magnitudes(device: torch.device | str | None) -> Tensor:
    """The 8 magnitudes, computed on ``device`` from the code index: no host-to-device copy
    (forbidden inside CUDA-graph capture) and no cached tensor (which would outlive a
    capture's private memory pool)."""
    i = torch.arange(8, dtype=torch.float32, device=device)
    normal = torch.ldexp(1.0 + 0.5 * (i % 2), (i // 2 - 1).to(torch.int32))
    return torch.where(i < 2, 0.5 * i, normal)


def e2m1_values(device: torch.device | str | None = None) -> Tensor:
    """float32 value of each of the 16 codes; code | 8 is the negative of code."""
    mags = e2m1_magnitudes(device)
    return torch.cat([mags, -mags])


def decode_e2m1(codes: Tensor) -> Tensor:
    """Unpacked uint8 codes (0..15) -> float32 values."""
    return e2m1_values(codes.device)[codes.long()]


def pack_e2m1(codes: Tensor) -> Tensor:
    """``[..., K]`` codes -> ``[..., K/2]`` bytes, element 2i in the low nibble."""
    if codes.shape[-1] % 2:
        raise ValueError(f"packing E2M1 needs an even last dimension, got {codes.shape[-1]}")
    pairs = codes.to(torch.uint8).unflatten(-1, (-1, 2))
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_e2m1(packed: Tensor) -> Tensor:
    """``[..., K/2]`` bytes -> ``[..., K]`` codes (inverse of :func:`pack_e2m1`)."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


@dataclass(frozen=True)
class NVFP4Tensor:
    """A tensor quantized along its last dimension ``K``.

    ``codes`` is uint8 ``[rows, K/2]`` (element 2i in the low nibble), ``scales`` is
    ``float8_e4m3fn`` ``[rows, K/16]``, both row-major; ``tensor_scale`` a float32 0-d tensor;
    ``shape`` and ``dtype`` describe the original high-precision tensor (rows = prod(shape[:-1])).
    """

    codes: Tensor
    scales: Tensor
    tensor_scale: Tensor
    shape: torch.Size
    dtype: torch.dtype

    def dequantize_unscaled(self) -> Tensor:
        """float32 ``[rows, K]`` of ``e2m1 * block_scale`` (exact), without the tensor scale:
        the operand a block-scaled tensor-core MMA sees before its final ``alpha``."""
        values = decode_e2m1(unpack_e2m1(self.codes)).unflatten(-1, (-1, BLOCK))
        return (values * self.scales.float().unsqueeze(-1)).flatten(-2)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """``e2m1 * block_scale * tensor_scale`` in the original shape (float32 math)."""
        values = self.dequantize_unscaled() * self.tensor_scale
        return values.reshape(self.shape).to(dtype or self.dtype)
