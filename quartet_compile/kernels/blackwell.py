"""Native NVFP4 GEMM for Blackwell: ``tl.dot_scaled`` with e2m1 operands and E4M3 scales per
16 elements, which Triton lowers to ``tcgen05.mma ... kind::mxf4nvf4.block_scale`` on datacenter
Blackwell (sm_100, sm_103) and to ``mma.sync ... kind::mxf4nvf4.block_scale`` on consumer
Blackwell (sm_120, sm_121; Triton 3.9 does, older releases may emulate it).

Operand layout is exactly :class:`~quartet_compile.nvfp4.NVFP4Tensor`'s: packed codes
``[rows, K/2]`` (element 2i in the low nibble, "first element in lower bits" in
``tl.dot_scaled``'s contract) and scales ``[rows, K/16]`` row-major, which ``dot_scaled``
takes untransposed for both operands (``lhs_scale [M, K/16]``, ``rhs_scale [N, K/16]``); the
16-element group size is deduced from those shapes. Triton copies the scales into tensor
memory in the layout the PTX ISA specifies for ``scale_vec::4X`` (checked against Triton's
``10-block-scaled-matmul`` tutorial and the PTX ISA section on tcgen05 block scaling).
No Blackwell GPU is available to this project: CI compiles this kernel for sm_100 and sm_120
and checks the instruction in the PTX (``tests/test_kernels_cpu.py``). So the backend routes
GEMMs here only after :func:`check_native_gemm` has compared the kernel with the float64
product on the device itself, and the installed Triton has compiled it to the native
instruction for that device (:func:`native_gemm_available`); a GPU that fails either keeps the
bf16-operand route of :mod:`.gemm`, with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..nvfp4.format import E4M3_MAX, NVFP4Tensor
from .configs import config
from .gemm import scaled_store
from .launch import cdiv, run


@triton.jit
def dot_scaled_gemm_kernel(
    a_ptr,
    a_scales_ptr,
    b_ptr,
    b_scales_ptr,
    scale_a_ptr,
    scale_b_ptr,
    bias_ptr,
    c_ptr,
    M,
    N,
    K,
    stride_cm,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_load = tl.where(m < M, m, 0).to(tl.int64)
    n_load = tl.where(n < N, n, 0).to(tl.int64)
    kb = tl.arange(0, BLOCK_K // 2)
    ks = tl.arange(0, BLOCK_K // 16)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K // BLOCK_K):
        a = tl.load(a_ptr + m_load[:, None] * (K // 2) + (k * (BLOCK_K // 2) + kb)[None, :])
        b = tl.load(b_ptr + n_load[:, None] * (K // 2) + (k * (BLOCK_K // 2) + kb)[None, :])
        sa = tl.load(a_scales_ptr + m_load[:, None] * (K // 16) + (k * (BLOCK_K // 16) + ks)[None, :])
        sb = tl.load(b_scales_ptr + n_load[:, None] * (K // 16) + (k * (BLOCK_K // 16) + ks)[None, :])
        acc = tl.dot_scaled(a, sa, "e2m1", tl.trans(b), sb, "e2m1", acc)
    scaled_store(acc, scale_a_ptr, scale_b_ptr, bias_ptr, c_ptr, m, n, M, N, stride_cm, HAS_BIAS)


def dot_scaled_gemm(a: NVFP4Tensor, b: NVFP4Tensor, out_dtype: torch.dtype, bias: Tensor | None = None) -> Tensor:
    """Native NVFP4 GEMM (sm_100+ only); ``K`` a multiple of :data:`NATIVE_K_MULTIPLE`."""
    m, k = a.codes.shape[0], 2 * a.codes.shape[1]
    n = b.codes.shape[0]
    cfg = config("blackwell_gemm", a.codes.device)
    c = torch.empty(m, n, dtype=out_dtype, device=a.codes.device)
    grid = (cdiv(m, cfg["BLOCK_M"]), cdiv(n, cfg["BLOCK_N"]))
    run(
        dot_scaled_gemm_kernel,
        grid,
        a.codes,
        a.scales,
        b.codes,
        b.scales,
        a.tensor_scale,
        b.tensor_scale,
        bias,
        c,
        m,
        n,
        k,
        c.stride(0),
        HAS_BIAS=bias is not None,
        **cfg,
    )
    return c


NATIVE_MAJORS = (10, 12)
"""Compute capability majors whose tensor cores take E2M1 operands with E4M3 scales per 16:
datacenter (sm_100, sm_103) and consumer (sm_120, sm_121) Blackwell."""

NATIVE_INSTRUCTION = "kind::mxf4nvf4.block_scale"
"""What the kernel's PTX holds where Triton lowers it natively (``tcgen05.mma`` or ``mma.sync``)."""

NATIVE_K_MULTIPLE = config("blackwell_gemm")["BLOCK_K"]
"""The kernel's K loop has no tail: reductions of other lengths take the bf16-operand route."""

_available: dict[int, bool] = {}


def check_native_gemm(device: torch.device, gemm: Callable[..., Tensor] = dot_scaled_gemm) -> str | None:
    """Why ``gemm`` disagrees with the float64 product of the dequantized operands on
    ``device`` (or raised), ``None`` if it agrees within 1e-5 relative: the first-use check of
    the native kernel, since CI can only compile it. The operands have row tails in both M
    and N, two K steps, every E2M1 code, block scales over four decades and a bias."""
    generator = torch.Generator(device=device).manual_seed(0)
    k = 2 * NATIVE_K_MULTIPLE

    def operand(rows: int) -> NVFP4Tensor:
        """Every E2M1 code, and finite E4M3 scales over four decades."""
        codes = torch.randint(0, 256, (rows, k // 2), generator=generator, device=device, dtype=torch.uint8)
        scales = torch.logspace(-2, 2, rows * k // 16, device=device)[
            torch.randperm(rows * k // 16, generator=generator, device=device)
        ].clamp(max=E4M3_MAX)
        tensor_scale = torch.rand((), generator=generator, device=device) + 0.5
        scales = scales.to(torch.float8_e4m3fn).view(rows, k // 16)
        return NVFP4Tensor(codes, scales, tensor_scale, torch.Size((rows, k)), torch.float32)

    a, b = operand(200), operand(136)
    product = a.dequantize(torch.float64) @ b.dequantize(torch.float64).T
    # A bias of the product's own size, so that dropping it fails the check.
    bias = (torch.randn(136, generator=generator, device=device) * product.abs().mean()).float()
    exact = product + bias.double()
    try:
        out = gemm(a, b, torch.float32, bias).double()
    except Exception as error:  # a compiler or launch failure is a failed check, not a crash
        return f"{type(error).__name__}: {error}"
    if out.shape != exact.shape or not bool(torch.isfinite(out).all()):
        return f"non-finite or misshaped output {tuple(out.shape)}"
    error = ((out - exact).norm() / exact.norm()).item()
    return None if error < 1e-5 else f"relative error {error:.2e} against the float64 product"


def native_ptx(capability: tuple[int, int]) -> str:
    """The PTX of :func:`dot_scaled_gemm_kernel` for a GPU of ``capability``, as the installed
    Triton compiles it (no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = config("blackwell_gemm")
    constexprs = {"HAS_BIAS": True, **{k: v for k, v in cfg.items() if not k.startswith("num_")}}
    signature = {
        "a_ptr": "*u8",
        "a_scales_ptr": "*fp8e4nv",
        "b_ptr": "*u8",
        "b_scales_ptr": "*fp8e4nv",
        "scale_a_ptr": "*fp32",
        "scale_b_ptr": "*fp32",
        "bias_ptr": "*bf16",
        "c_ptr": "*bf16",
        **dict.fromkeys(("M", "N", "K", "stride_cm"), "i32"),
        **dict.fromkeys(constexprs, "constexpr"),
    }
    major, minor = capability
    source = ASTSource(fn=dot_scaled_gemm_kernel, signature=signature, constexprs=constexprs)
    options = {k: v for k, v in cfg.items() if k.startswith("num_")}
    return triton.compile(source, target=GPUTarget("cuda", 10 * major + minor, 32), options=options).asm["ptx"]


def _native_failure(index: int) -> str | None:
    """Why the native route is not taken on GPU ``index`` (``None``: it is)."""
    capability = torch.cuda.get_device_capability(index)
    try:
        native = NATIVE_INSTRUCTION in native_ptx(capability)
    except Exception as error:  # a compiler failure keeps the bf16-operand route
        return f"the kernel does not compile for sm_{capability[0]}{capability[1]}: {type(error).__name__}: {error}"
    if not native:
        return f"Triton {triton.__version__} emulates the block-scaled MMA on sm_{capability[0]}{capability[1]}"
    return check_native_gemm(torch.device("cuda", index))


def native_gemm_available(device: torch.device) -> bool:
    """Whether NVFP4 GEMMs on ``device`` take :func:`dot_scaled_gemm`: a Blackwell GPU for which
    the installed Triton emits the native block-scaled MMA and on which :func:`check_native_gemm`
    passed (both once per device, on first use). The check synchronizes, so it is not run inside
    CUDA-graph capture: a graph captured before the first eager call keeps the bf16-operand
    route."""
    if device.type != "cuda":
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _available:
        if torch.cuda.get_device_capability(index)[0] not in NATIVE_MAJORS:
            _available[index] = False
        elif torch.cuda.is_current_stream_capturing():
            return False
        else:
            failure = _native_failure(index)
            if failure is not None:
                warnings.warn(
                    f"quartet: the native NVFP4 GEMM failed its check on {torch.cuda.get_device_name(index)} "
                    f"({failure}); NVFP4 GEMMs take the bf16-operand route",
                    stacklevel=2,
                )
            _available[index] = failure is None
    return _available[index]
