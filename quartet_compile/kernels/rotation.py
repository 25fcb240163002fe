"""Random Hadamard rotations on tensor cores, shared by MS-EDEN (RHT-128, :mod:`.ms_eden`)
and the ``nvidia`` recipe (RHT-16 on the weight-gradient operands, :mod:`.nvidia`).

The rotation ``D H`` is a +-1 matrix, exact in bf16, so a bf16 operand is rotated by one
tensor-core product with float32 accumulation; fp16 and float32 operands are split into 2
or 3 exact bf16 parts first. The accumulation order is the hardware's, so rotated values
may differ from the reference's ``rht`` in the last bits; the kernels' tests compare everything
after the rotation bit for bit, fed the kernel's rotated tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import run

SPLITS = {torch.bfloat16: 1, torch.float16: 2, torch.float32: 3}
"""Exact bf16 parts a source dtype is cut into for :func:`dot_split`."""


@triton.jit
def _dot(a, b, acc, EMULATED: tl.constexpr):
    """bf16 tensor-core product; in float32 when EMULATED (the Triton interpreter's bf16 dot
    is wrong, and every operand here is exact in both)."""
    if EMULATED:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=tl.float32)
    return tl.dot(a, b, acc, out_dtype=tl.float32)


@triton.jit
def dot_split(x, rotation, SPLITS: tl.constexpr, EMULATED: tl.constexpr):
    """``x @ rotation`` with ``x`` cut into SPLITS exact bf16 parts (hi + mid + lo)."""
    hi = x.to(tl.bfloat16)
    acc = _dot(hi, rotation, None, EMULATED)
    if SPLITS > 1:
        rest = x.to(tl.float32) - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        acc = _dot(mid, rotation, acc, EMULATED)
        if SPLITS > 2:
            acc = _dot((rest - mid.to(tl.float32)).to(tl.bfloat16), rotation, acc, EMULATED)
    return acc


@triton.jit
def _rotation_kernel(
    source_ptr, out_ptr, zero_ptr, zero_numel, N: tl.constexpr, FROM_SEED: tl.constexpr, ZERO_BLOCK: tl.constexpr
):
    """Row ``i`` of the Sylvester matrix, ``(-1)^popcount(i & j)``, times ``sign[i]``, stored
    column-major; the parity of up to 16 bits is folded with shifts. The signs are read from
    ``source_ptr``, or with FROM_SEED drawn from Philox with the int64 seed there (uniform ``u_i``
    at offset ``i``, sign -1 where ``u_i < 0.5``, as ``nvfp4.randomness.random_signs`` maps its
    uniforms). The first ``zero_numel`` floats of ``zero_ptr`` are zeroed in the same launch."""
    i = tl.arange(0, N)
    bits = i[:, None] & i[None, :]
    for shift in tl.static_range(4):
        bits = bits ^ (bits >> (8 >> shift))
    if FROM_SEED:
        sign = tl.where(tl.rand(tl.load(source_ptr), i) < 0.5, -1.0, 1.0)[:, None]
    else:
        sign = tl.load(source_ptr + i)[:, None]
    tl.store(out_ptr + i[:, None] + i[None, :] * N, tl.where((bits & 1) == 1, -sign, sign).to(tl.bfloat16))
    z = tl.arange(0, ZERO_BLOCK)
    tl.store(zero_ptr + z, tl.zeros([ZERO_BLOCK], dtype=tl.float32), mask=z < zero_numel)


def _rotation(n: int, source: Tensor, from_seed: bool, zero: Tensor | None) -> Tensor:
    if n & (n - 1) or not 1 <= n <= 2**16:
        raise ValueError(f"rotation size must be a power of two up to 2**16, got {n}")
    out = torch.empty_strided((n, n), (1, n), dtype=torch.bfloat16, device=source.device)
    if zero is None:
        zero = out.new_empty(0, dtype=torch.float32)
    block = max(1, 1 << (zero.numel() - 1).bit_length())
    run(_rotation_kernel, (1,), source, out, zero, zero.numel(), N=n, FROM_SEED=from_seed, ZERO_BLOCK=block)
    return out


def rotation_matrix(signs: Tensor) -> Tensor:
    """``D H`` as bf16 ``[n, n]`` (entries +-1, exact) for the given signs: one per backward
    call, shared by both operands of each GEMM so that the rotation cancels in the product.
    Stored column-major (strides ``(1, n)``): the MS-EDEN kernel gathers whole columns in
    ``ms_eden._accumulator_order``, and contiguous columns keep those loads vectorized."""
    return _rotation(signs.numel(), signs.to(torch.float32), from_seed=False, zero=None)


def random_rotation(n: int, seed: Tensor, zero: Tensor | None = None) -> Tensor:
    """``D H`` with ``n`` random signs drawn from Philox with ``seed`` (an int64 0-d device
    tensor, drawn by the backward with its operands' seeds), in one launch, which also zeroes the
    float32 scratch ``zero`` (the amax buffers of the backward's quantizers)."""
    return _rotation(n, seed, from_seed=True, zero=zero)
