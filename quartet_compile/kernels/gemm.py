"""NVFP4 GEMM ``C = deq(A) deq(B)^T * (s_A s_B) [+ bias]`` with float32 accumulation, from the
exact unscaled operands ``e2m1 * s_b`` that the quantize kernels write in bf16 (``e2m1 * s_b``
is exact in bf16), with the tensor scales, bias and cast in the epilogue.

* :func:`tma_gemm` (sm_90+): a persistent Triton GEMM fed by TMA into wgmma, the epilogue fused;
* :func:`load_gemm`: the same GEMM loading its tiles through pointers, for graphs whose launcher
  cannot give TMA descriptors their global scratch;
* :func:`cublas_gemm` (any CUDA GPU): cuBLAS writes float32 and one epilogue pass follows;
* :func:`unscaled_gemm` picks between them; :mod:`.blackwell` multiplies packed FP4 natively.

All equal the float64 product of the dequantized operands up to float32 accumulation.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from .configs import config, multiprocessors
from .launch import cdiv, run, traced


@triton.jit
def _scaled(acc, scale, bias_ptr, n, N, HAS_BIAS: tl.constexpr):
    """``acc * (s_A * s_B) [+ bias]`` in the reference's order, for output columns ``n``."""
    acc = acc * scale
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def scaled_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, stride_cm, HAS_BIAS: tl.constexpr):
    """``(acc * (s_A * s_B) [+ bias]).to(C)``, masked store."""
    acc = _scaled(acc, tl.load(scale_a_ptr) * tl.load(scale_b_ptr), bias_ptr, n, N, HAS_BIAS)
    mask = (m < M)[:, None] & (n < N)[None, :]
    tl.store(c_ptr + m.to(tl.int64)[:, None] * stride_cm + n[None, :], acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grouped_tile(tile, grid_m, grid_n, GROUP_M: tl.constexpr):
    """(row, column) tile of linear index ``tile``, walking ``GROUP_M`` tile rows at a time so
    that programs running together share operand tiles in L2."""
    width = GROUP_M * grid_n
    first_m = (tile // width) * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    return first_m + (tile % size_m), (tile % width) // size_m


@triton.jit
def _store_halves(
    acc,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    c_ptr,
    m0,
    n0,
    M,
    N,
    stride_c,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """:func:`scaled_store` of the ``[BLOCK_M, BLOCK_N]`` output tile at ``(m0, n0)`` as two
    column halves (halves keep the store's shared-memory staging within budget)."""
    left, right = tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
    m = m0 + tl.arange(0, BLOCK_M)
    n = n0 + tl.arange(0, BLOCK_N // 2)
    scaled_store(left, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, stride_c, HAS_BIAS)
    n += BLOCK_N // 2
    scaled_store(right, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, stride_c, HAS_BIAS)


@triton.jit
def _tma_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_a,
    stride_b,
    stride_c,
    programs,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Persistent: ``programs`` programs walk the output tiles; TMA loads (zero-filled past the
    edges) feed wgmma, and the epilogue scales the tile and stores it (:func:`_store_halves`). The
    TMA descriptors are built on the device (in a global scratch buffer), so that a compiled
    graph launches the kernel with plain pointers; the output is written by ``tl.store``, which
    PyTorch's analysis of a traced launch sees as a write (some releases miss writes through
    descriptors)."""
    a_desc = tl.make_tensor_descriptor(a_ptr, [M, K], [stride_a, 1], [BLOCK_M, BLOCK_K])
    b_desc = tl.make_tensor_descriptor(b_ptr, [N, K], [stride_b, 1], [BLOCK_N, BLOCK_K])
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, programs, flatten=True):
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            acc = tl.dot(a_desc.load([m0, k0]), b_desc.load([n0, k0]).T, acc)
        _store_halves(
            acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m0, n0, M, N, stride_c, HAS_BIAS, BLOCK_M, BLOCK_N
        )


@triton.jit
def _load_gemm_kernel(
    a_ptr,
    b_ptr,
    c_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    M,
    N,
    K,
    stride_a,
    stride_b,
    stride_c,
    programs,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """:func:`_tma_gemm_kernel` with its operand tiles loaded through pointers (asynchronous
    copies into the same wgmma pipeline) instead of TMA descriptors: no descriptor, so no
    global scratch, which a C++ wrapper that allocates one slot per grid cannot overrun. Rows
    past the edges read row 0 (their results are masked at the store); columns past ``K`` read
    zeros."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    for tile in tl.range(tl.program_id(0), grid_m * grid_n, programs, flatten=True):
        pid_m, pid_n = _grouped_tile(tile, grid_m, grid_n, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        rows_a = m0 + tl.arange(0, BLOCK_M)
        rows_b = n0 + tl.arange(0, BLOCK_N)
        rows_a = tl.max_contiguous(tl.multiple_of(tl.where(rows_a < M, rows_a, 0), BLOCK_M), BLOCK_M)
        rows_b = tl.max_contiguous(tl.multiple_of(tl.where(rows_b < N, rows_b, 0), BLOCK_N), BLOCK_N)
        a_rows = a_ptr + rows_a.to(tl.int64)[:, None] * stride_a
        b_rows = b_ptr + rows_b.to(tl.int64)[:, None] * stride_b
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            a = tl.load(a_rows + k[None, :], mask=(k < K)[None, :], other=0.0)
            b = tl.load(b_rows + k[None, :], mask=(k < K)[None, :], other=0.0)
            acc = tl.dot(a, b.T, acc)
        _store_halves(
            acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m0, n0, M, N, stride_c, HAS_BIAS, BLOCK_M, BLOCK_N
        )


@triton.jit
def _scale_epilogue_kernel(
    acc_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    c_ptr,
    M,
    N,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (m < M)[:, None] & (n < N)[None, :]
    acc = tl.load(acc_ptr + m.to(tl.int64)[:, None] * N + n[None, :], mask=mask, other=0.0)
    scaled_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, N, HAS_BIAS)


def _output(rows: int, cols: int, like: Tensor, out_dtype: torch.dtype) -> Tensor:
    return torch.empty(rows, cols, dtype=out_dtype, device=like.device)


def _persistent_gemm(
    kernel: triton.JITFunction,
    name: str,
    a_unscaled: Tensor,
    b_unscaled: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    out_dtype: torch.dtype,
    bias: Tensor | None,
) -> Tensor:
    """Launch one of the persistent GEMM kernels with configuration ``name``: one program per
    SM (or per output tile, if fewer)."""
    cfg = config(name, a_unscaled.device)
    (m, k), n = a_unscaled.shape, b_unscaled.shape[0]
    c = _output(m, n, a_unscaled, out_dtype)
    if c.element_size() > 2:
        cfg["num_stages"] -= 1
    bm, bn, bk = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    tiles = cdiv(m, bm) * cdiv(n, bn)
    programs = min(tiles, multiprocessors(c.device))
    run(
        kernel,
        (programs,),
        a_unscaled,
        b_unscaled,
        c,
        scale_a,
        scale_b,
        bias,
        m,
        n,
        k,
        a_unscaled.stride(0),
        b_unscaled.stride(0),
        c.stride(0),
        programs,
        HAS_BIAS=bias is not None,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        **cfg,
    )
    return c


def tma_gemm(
    a_unscaled: Tensor,
    b_unscaled: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    out_dtype: torch.dtype,
    bias: Tensor | None = None,
) -> Tensor:
    """Triton bf16 GEMM of the exact unscaled operands with the scale, bias and cast fused
    into its epilogue (sm_90+; operands and output must meet TMA's 16-byte alignment, see
    :func:`tma_compatible`)."""
    if not traced((a_unscaled,)):
        triton.set_allocator(_scratch)  # per thread: the backward runs in autograd's own thread
    return _persistent_gemm(_tma_gemm_kernel, "tma_gemm", a_unscaled, b_unscaled, scale_a, scale_b, out_dtype, bias)


def load_gemm(
    a_unscaled: Tensor,
    b_unscaled: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    out_dtype: torch.dtype,
    bias: Tensor | None = None,
) -> Tensor:
    """:func:`tma_gemm` loading its tiles through pointers: no global scratch, for the graphs
    that cannot give the TMA GEMM its scratch (:func:`scratch_safe_in_compiled_graphs`). Same
    requirements as :func:`tma_gemm`."""
    return _persistent_gemm(_load_gemm_kernel, "load_gemm", a_unscaled, b_unscaled, scale_a, scale_b, out_dtype, bias)


def _scratch(size: int, alignment: int, stream: int | None) -> Tensor:
    """Triton's global scratch (where the kernel builds its TMA descriptors) from PyTorch's
    caching allocator, as Inductor allocates it for the kernels it launches."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


TMA_MAJORS = (9, 10)
"""Compute capability majors :func:`tma_gemm` runs on: Hopper and datacenter Blackwell, with TMA
and the 227 KB of shared memory per block its pipeline takes (consumer Blackwell has TMA but
about 100 KB; Ampere and Ada have neither)."""


@functools.cache
def _has_tma(device: torch.device) -> bool:
    """Whether ``device`` runs :func:`tma_gemm`, cached like :func:`.configs.multiprocessors`."""
    return torch.cuda.get_device_capability(device)[0] in TMA_MAJORS


def describe(device: torch.device) -> str:
    """How bf16-operand GEMMs run on ``device``, for the route's reason."""
    if device.type == "cuda" and _has_tma(device):
        return "TMA GEMM where the output fills the GPU, else cuBLAS"
    return "cuBLAS GEMM (no TMA GEMM below sm_90 or on consumer Blackwell)"


def tma_compatible(a_unscaled: Tensor, b_unscaled: Tensor, out_dtype: torch.dtype) -> bool:
    """Whether :func:`tma_gemm` can run: a GPU of :data:`TMA_MAJORS`, nonempty row-major operands of
    one 16-bit dtype (a float32 ``tl.dot`` would round its inputs to TF32) and output rows
    whose starts are 16-byte aligned."""
    if a_unscaled.device.type != "cuda" or not _has_tma(a_unscaled.device):
        return False
    if a_unscaled.dtype != b_unscaled.dtype or a_unscaled.dtype not in (torch.bfloat16, torch.float16):
        return False
    if min(*a_unscaled.shape, *b_unscaled.shape) == 0:
        return False
    rows_ok = all(t.stride(1) == 1 and (t.stride(0) * t.element_size()) % 16 == 0 for t in (a_unscaled, b_unscaled))
    return (
        rows_ok
        and all(map(_aligned, (a_unscaled, b_unscaled)))
        and (b_unscaled.shape[0] * out_dtype.itemsize) % 16 == 0
    )


def _aligned(t: Tensor) -> bool:
    """Whether ``t`` starts 16-byte aligned. While a graph is traced there is no address: a
    tensor at offset 0 of its storage is aligned, as every allocation is."""
    if traced((t,)):
        return t.storage_offset() == 0
    return t.data_ptr() % 16 == 0


TMA_MIN_WAVE = 0.75
"""Fewest output tiles, as a fraction of the SM count, for which :func:`tma_gemm` beats
:func:`cublas_gemm` (measured; see docs/kernels.md). The TMA GEMM gives each program whole
tiles and never splits K, so a weight gradient such as ``[512, T] x [T, 512]`` runs 8 tiles on
132 SMs, where cuBLAS splits K."""


def fills_device(m: int, n: int, device: torch.device) -> bool:
    """Whether an ``[m, n]`` output has enough :func:`tma_gemm` tiles to keep every SM busy
    without splitting K."""
    cfg = config("tma_gemm", device)
    tiles = cdiv(m, cfg["BLOCK_M"]) * cdiv(n, cfg["BLOCK_N"])
    return tiles >= TMA_MIN_WAVE * multiprocessors(device)


def scratch_safe_in_compiled_graphs() -> bool:
    """Whether the graph being compiled may launch :func:`tma_gemm`, which builds its TMA
    descriptors in Triton's global scratch, one slot per program. Inductor's Python wrapper
    allocates it as Triton's launcher does; its C++ wrapper (``torch._inductor.config.cpp_wrapper``,
    read when the graph is traced) allocated a single slot before pytorch/pytorch#175385, so every
    program but the first wrote past it: an illegal memory access on torch 2.11. There the GEMM
    takes :func:`load_gemm` instead."""
    return not torch._inductor.config.cpp_wrapper or _cpp_wrapper_scales_scratch()


@functools.cache
def _cpp_wrapper_scales_scratch() -> bool:
    """Whether Inductor's C++ wrapper sizes a kernel's global scratch by its grid, read from the
    code it generates for one (any failure to generate it counts as no)."""
    try:
        from torch._inductor.codegen.common import TritonScratchWorkspace
        from torch._inductor.codegen.cuda.device_op_overrides import CUDADeviceOpOverrides

        generated = CUDADeviceOpOverrides().cpp_scratch(0, TritonScratchWorkspace(1, lambda: "uint8"))
    except Exception:  # an internal API that may change: a failure keeps the pointer loads
        return False
    return generated is not None and "grid_0" in "\n".join(generated[0])


def unscaled_gemm(
    a_unscaled: Tensor,
    b_unscaled: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    out_dtype: torch.dtype,
    bias: Tensor | None = None,
) -> Tensor:
    """``(A_u B_u^T) s_A s_B [+ bias]``: where the output fills the device and TMA can run,
    :func:`tma_gemm`, or :func:`load_gemm` in a graph that cannot give it its scratch; else
    :func:`cublas_gemm` (whose float32 output and second pass cost most at small K, and which is
    faster on few output tiles)."""
    if not (
        tma_compatible(a_unscaled, b_unscaled, out_dtype)
        and fills_device(a_unscaled.shape[0], b_unscaled.shape[0], a_unscaled.device)
    ):
        return cublas_gemm(a_unscaled, b_unscaled, scale_a, scale_b, out_dtype, bias)
    gemm = tma_gemm if scratch_safe_in_compiled_graphs() or not traced((a_unscaled,)) else load_gemm
    return gemm(a_unscaled, b_unscaled, scale_a, scale_b, out_dtype, bias)


def cublas_gemm(
    a_unscaled: Tensor,
    b_unscaled: Tensor,
    scale_a: Tensor,
    scale_b: Tensor,
    out_dtype: torch.dtype,
    bias: Tensor | None = None,
) -> Tensor:
    """cuBLAS GEMM of the exact unscaled operands into float32 (bf16 or fp16 operands, or float32
    ones, which cuBLAS multiplies in full float32 unless TF32 is allowed), then the epilogue:
    one pass, or in a compiled graph (without bias) tensor ops that Inductor fuses into the
    kernel reading the product next, one launch fewer. Both round ``acc * (s_A s_B)`` once, the
    same way; with a bias the pass stays, so that eager and compiled runs add it in one kernel
    (which may contract the product and the sum)."""
    if a_unscaled.dtype == torch.float32:
        acc = torch.mm(a_unscaled, b_unscaled.T)
    else:
        acc = torch.mm(a_unscaled, b_unscaled.T, out_dtype=torch.float32)
    if bias is None and traced((acc,)):
        return (acc * (scale_a * scale_b)).to(out_dtype)
    m, n = acc.shape
    c = _output(m, n, acc, out_dtype)
    cfg = config("scale_epilogue", acc.device)
    grid = (cdiv(m, cfg["BLOCK_M"]), cdiv(n, cfg["BLOCK_N"]))
    run(
        _scale_epilogue_kernel,
        grid,
        acc,
        scale_a,
        scale_b,
        bias,
        c,
        m,
        n,
        HAS_BIAS=bias is not None,
        **cfg,
    )
    return c
