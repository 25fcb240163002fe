"""The NVFP4 container: packed E2M1 codes, E4M3 block scales, one FP32 tensor scale."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .formats import decode_e2m1, unpack_e2m1

BLOCK = 16


@dataclass(frozen=True)
class NVFP4Tensor:
    """A tensor quantized along its last dimension ``K`` (SPEC section 1).

    ``codes`` is uint8 ``[rows, K/2]`` (element 2i in the low nibble), ``scales`` is
    ``float8_e4m3fn`` ``[rows, K/16]``, ``tensor_scale`` a float32 0-d tensor; ``shape``
    and ``dtype`` describe the original high-precision tensor (rows = prod(shape[:-1])).
    """

    codes: Tensor
    scales: Tensor
    tensor_scale: Tensor
    shape: torch.Size
    dtype: torch.dtype

    @classmethod
    def quantize(cls, x: Tensor, *, four_over_six: bool = False) -> NVFP4Tensor:
        """The deterministic forward quantizer: RTN ("6") or, with ``four_over_six``, 4/6."""
        from .quantizers import quantize_four_over_six, quantize_rtn

        return quantize_four_over_six(x) if four_over_six else quantize_rtn(x)

    def dequantize_unscaled(self) -> Tensor:
        """float32 ``[rows, K]`` of ``e2m1 * block_scale`` (exact), without the tensor scale:
        the operand a block-scaled tensor-core MMA sees before its final ``alpha``."""
        values = decode_e2m1(unpack_e2m1(self.codes)).unflatten(-1, (-1, BLOCK))
        return (values * self.scales.float().unsqueeze(-1)).flatten(-2)

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:
        """``e2m1 * block_scale * tensor_scale`` in the original shape (float32 math)."""
        values = self.dequantize_unscaled() * self.tensor_scale
        return values.reshape(self.shape).to(dtype or self.dtype)


def nvfp4_matmul(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """``deq(a) @ deq(b)^T [+ bias]`` the way block-scaled FP4 tensor cores compute it: exact
    ``e2m1 * scale`` operands, float32 accumulation, tensor scales applied once at the end,
    then the bias in float32 (the GEMM kernels' epilogue), then the cast."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"reduction dims differ: {tuple(a.shape)} @ {tuple(b.shape)}^T")
    product = a.dequantize_unscaled() @ b.dequantize_unscaled().T
    product = product * (a.tensor_scale * b.tensor_scale)
    return (product if bias is None else product + bias.float()).to(out_dtype)
