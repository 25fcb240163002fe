"""CPU tests of the Triton kernels: interpreter runs against the reference, and compile-only
checks of the generated PTX for Hopper (sm_90) and Blackwell (sm_100)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from quartet_bench.studies.kernel_resources import (  # noqa: E402
    CUOBJDUMP,
    GRADIENT,
    MS_EDEN_SIGNATURE,
    SAVED,
    _row,
    compile_kernel,
    cubin_resources,
    ms_eden_launch,
    quantize_launch,
    sass,
)
from quartet_compile.kernels import blackwell, gemm, ms_eden, nvidia, quantize  # noqa: E402
from quartet_compile.kernels.configs import config  # noqa: E402
from quartet_compile.reference import nvfp4_matmul  # noqa: E402

CHECKS = Path(__file__).with_name("interpreted_kernel_checks.py")


def _needs_cuobjdump() -> None:
    if not CUOBJDUMP.exists():
        pytest.skip("Triton's bundled cuobjdump is not installed")


@pytest.mark.interpreter
@pytest.mark.parametrize(
    "check",
    ["rounding", "division", "forward_quantize", "ms_eden_stage", "nvidia_stage", "pointer_load_gemm", "linear_routes"],
)
def test_kernel_matches_reference_in_triton_interpreter(check):
    _interpret(check)


def _interpret(check: str, *seed: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, str(CHECKS), check, *seed]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


@pytest.mark.interpreter
def test_division_check_draws_only_divisions_inside_the_fast_path_domain():
    """Seed 1685312294 once drew a zero divisor (``torch.rand`` can return exactly 0)."""
    _interpret("division", "1685312294")


_GEMM_SIGNATURE = {
    "a_ptr": "*u8",
    "a_scales_ptr": "*u8",
    "b_ptr": "*u8",
    "b_scales_ptr": "*u8",
    "scale_a_ptr": "*fp32",
    "scale_b_ptr": "*fp32",
    "bias_ptr": "*bf16",
    "c_ptr": "*bf16",
    "M": "i32",
    "N": "i32",
    "K": "i32",
    "stride_cm": "i32",
}


def _split(config: dict) -> tuple[dict, dict]:
    constexprs = {k: v for k, v in config.items() if not k.startswith("num_")}
    return constexprs, {k: v for k, v in config.items() if k.startswith("num_")}


def test_blackwell_gemm_compiles_to_native_nvfp4_mma():
    constexprs, options = _split(config("blackwell_gemm"))
    signature = {**_GEMM_SIGNATURE, "a_scales_ptr": "*fp8e4nv", "b_scales_ptr": "*fp8e4nv"}
    compiled = compile_kernel(
        blackwell.dot_scaled_gemm_kernel, signature, {"HAS_BIAS": True, **constexprs}, 100, **options
    )
    ptx = compiled.asm["ptx"]
    assert "tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale" in ptx
    # One E4M3 scale per 16 elements (Triton 3.9 spells it ".block16", 3.6 "scale_vec::4X"),
    # both operands e2m1 with scales shaped [rows, K/16] exactly as NVFP4Tensor stores them.
    assert re.search(r"kind::mxf4nvf4\.block_scale\.(block16|scale_vec::4X)", ptx)
    bm, bn, bk = (constexprs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    operands = (
        rf"tensor<{bm}x{bk // 2}xi8>, tensor<{bm}x{bk // 16}xf8E4M3FN> \* "
        rf"tensor<{bk // 2}x{bn}xi8>, tensor<{bn}x{bk // 16}xf8E4M3FN>"
    )
    assert re.search(rf"tt\.dot_scaled .* lhs = e2m1 rhs = e2m1 .*: {operands}", compiled.asm["ttir"])
    assert "ttng.tc_gen5_mma_scaled" in compiled.asm["ttgir"]
    # The instruction descriptor (4th operand) tells the MMA how to read the scale bytes. In
    # the block-scaled layout (Triton's createScaleInstDescriptorFp4): N >> 3 at bits 17-22,
    # the scale type at 23-24 (0: UE4M3; UE8M0 otherwise), M >> 5 at 25-28.
    mma = re.search(r"tcgen05\.mma\.cta_group::1\.kind::mxf4nvf4\S* [^,]+, %\w+, %\w+, (%r\d+),", ptx)
    descriptor = int(re.search(rf"mov\.b32\s+{re.escape(mma.group(1))}, (\d+);", ptx).group(1))
    assert ((descriptor >> 17) & 63, (descriptor >> 25) & 15) == (bn >> 3, bm >> 5)
    assert (descriptor >> 23) & 3 == 0, "the MMA would read the E4M3 scale bytes as UE8M0"


_HOPPER_GEMM_SIGNATURE = {
    "a_ptr": "*bf16",
    "b_ptr": "*bf16",
    "c_ptr": "*bf16",
    "scale_a_ptr": "*fp32",
    "scale_b_ptr": "*fp32",
    "bias_ptr": "*bf16",
    "M": "i32",
    "N": "i32",
    "K": "i32",
    "stride_a": "i32",
    "stride_b": "i32",
    "stride_c": "i32",
    "programs": "i32",
}


@pytest.mark.parametrize("out", ["bf16", "fp32"])
def test_hopper_tma_gemm_is_fed_by_tma_and_stores_through_it(out):
    """The shipped Hopper GEMM: TMA tile loads into wgmma through descriptors built on the
    device, with the shared-memory budget of its pipeline (one stage less for float32 outputs)
    fitting."""
    constexprs, options = _split(config("tma_gemm"))
    bm, bn, bk = (constexprs[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    if out == "fp32":
        options["num_stages"] -= 1
    signature = {**_HOPPER_GEMM_SIGNATURE, "c_ptr": f"*{out}"}
    compiled = compile_kernel(gemm._tma_gemm_kernel, signature, {"HAS_BIAS": True, **constexprs}, 90, **options)
    ptx = compiled.asm["ptx"]
    assert re.search(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16", ptx)
    assert re.search(r"cp\.async\.bulk\.tensor\.2d\.shared::\w+\.global", ptx)
    assert "tensormap.replace" in ptx  # the descriptors are built on the device
    assert compiled.metadata.shared <= 227 * 1024


@triton.jit
def _multiply_add_kernel(a_ptr, b_ptr, c_ptr, out_ptr):
    tl.store(out_ptr, tl.load(a_ptr) * tl.load(b_ptr) + tl.load(c_ptr))


def test_exact_launch_options_keep_multiply_and_add_apart():
    """``EXACT`` (the launch options of every quantize kernel) stops the compiler from
    contracting a multiply and an add into one FMA, which the reference never does."""
    signature = dict.fromkeys(["a_ptr", "b_ptr", "c_ptr", "out_ptr"], "*fp32")
    assert "fma.rn.f32" in compile_kernel(_multiply_add_kernel, signature, {}, 90).asm["ptx"]
    assert "fma.rn.f32" not in compile_kernel(_multiply_add_kernel, signature, {}, 90, **quantize.EXACT).asm["ptx"]


def _assert_exact_rounding(kernel, signature: dict[str, str], constexprs: dict) -> str:
    """IEEE division on the exact path, E4M3 rounding by bit manipulation (no float8 cvt)."""
    ptx = compile_kernel(kernel, signature, constexprs, 90, **quantize.EXACT).asm["ptx"]
    assert "div.rn.f32" in ptx
    assert "cvt.rn.satfinite.e4m3x2" not in ptx
    return ptx


@pytest.mark.parametrize(("four_over_six", "tile_2d"), [(False, False), (True, False), (False, True)])
def test_quantize_kernel_ptx_rounds_exactly(four_over_six, tile_2d):
    kernel, signature, constexprs = quantize_launch(
        not tile_2d, FOUR_OVER_SIX=four_over_six, TILE_2D=tile_2d, BLOCK_R=32, BLOCK_C=128
    )
    _assert_exact_rounding(kernel, signature, constexprs)


def test_ms_eden_kernel_ptx_rounds_exactly():
    kernel, signature, constexprs = ms_eden_launch({"PACKED": False, "STORE_CODES": True, "STORE_DEQ": True})
    ptx = _assert_exact_rounding(kernel, signature, constexprs)
    assert re.search(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16", ptx)
    # The rotation's columns are loaded in accumulator order, so every 16-block lies in one
    # thread: the only shuffles left sum the EDEN correction over a row's four lanes (a
    # layout that spreads blocks over lanes compiles to 128 here).
    assert len(re.findall(r"shfl\.sync", ptx)) <= 8


def test_ms_eden_slots_do_not_add_registers():
    """A launch over two or four MS-EDEN operands (one backward GEMM's, or a layer's) compiles the
    quantize pass to the registers of a one-operand launch: each program runs one slot, chosen by
    an ``if``/``else`` chain (with independent conditions per slot, two slots took 168 registers
    instead of 128, one program per Hopper SM instead of two, with Triton 3.6 and 3.9)."""
    _needs_cuobjdump()
    warps = config("ms_eden_quantize")["num_warps"]
    one = _row("one", ms_eden_launch(GRADIENT, tiles=2), ("a_stride_c",), 90, warps)
    for slots, unit_strides in (
        ((GRADIENT, SAVED), ("a_stride_c",)),
        ((GRADIENT, SAVED) * 2, ("a_stride_c", "c_stride_r")),
    ):
        several = _row("several", ms_eden_launch(*slots, tiles=2), unit_strides, 90, warps)
        assert several["registers"] <= one["registers"] and several["spilled_bytes"] == 0, (len(slots), one, several)
        assert several["instructions"] > (len(slots) - 1) * one["instructions"]  # every slot's body was compiled


def test_statistics_are_published_with_relaxed_atomics():
    """The amax passes' atomics are relaxed, with no GPU-scope fence before them: only a later
    launch reads the statistics, and Triton's default acquire-release atomic fences the loads of
    the tiles still in flight (the MS-EDEN amax pass and the forward's statistics kernel)."""
    kernel, signature, constexprs = ms_eden_launch({"PACKED": False, "STORE_CODES": False, "STORE_DEQ": True})
    ms_eden_amax = compile_kernel(
        kernel, signature, {**constexprs, "AMAX_PASS": True}, 90, num_warps=8, **quantize.EXACT
    )
    stats_signature = {"stats_ptr": "*fp32", "a_ptr": "*bf16", "a_n": "i32", "a_stats_row": "i32", "a_programs": "i32",
                       "b_ptr": "*bf16", "b_n": "i32", "b_stats_row": "i32"}  # fmt: skip
    stats = compile_kernel(quantize._stats_kernel, stats_signature, {"TWO": True, "BLOCK_SIZE": 1024}, 90, num_warps=4)
    for compiled in (ms_eden_amax, stats):
        ptx = compiled.asm["ptx"]
        atomics = re.findall(r"\b(?:atom|red)\.[\w.:]+", ptx)
        assert atomics and all(".relaxed." in a for a in atomics), atomics
        assert not re.search(r"\bfence\.(?:sc|acq_rel)|\bmembar\.", ptx)


@pytest.mark.parametrize("rotate", [False, True])
def test_nvidia_kernel_ptx_rounds_exactly(rotate):
    # MS-EDEN's arguments without the saved-FP4 source's scales.
    signature = {k: v for k, v in MS_EDEN_SIGNATURE.items() if k not in ("src_scales_ptr", "src_tensor_scale_ptr")}
    constexprs = {
        "AMAX_PASS": False,
        "ROTATE": rotate,
        "STOCHASTIC": True,
        "SPLITS": 1,
        "EMULATED": False,
        "STORE_CODES": True,
        "STORE_DEQ": True,
        "DEBUG": False,
        **{k: v for k, v in config("nvidia").items() if not k.startswith("num_")},
    }
    ptx = _assert_exact_rounding(nvidia._nvidia_kernel, signature, constexprs)
    assert bool(re.search(r"wgmma\.mma_async\.sync\.aligned\.m64n16k16\.f32\.bf16\.bf16", ptx)) == rotate


@pytest.mark.parametrize("out", ["bf16", "fp32"])
def test_hopper_load_gemm_feeds_wgmma_from_asynchronous_copies_without_descriptors(out):
    """The GEMM of graphs whose launcher gives no global scratch: pointer loads pipelined by
    asynchronous copies into wgmma, no TMA descriptor (so no scratch), within the shared-memory
    budget."""
    constexprs, options = _split(config("load_gemm"))
    if out == "fp32":
        options["num_stages"] -= 1
    signature = {**_HOPPER_GEMM_SIGNATURE, "c_ptr": f"*{out}"}
    aligned = ("a_ptr", "b_ptr", "c_ptr", "K", "stride_a", "stride_b", "stride_c")
    compiled = compile_kernel(
        gemm._load_gemm_kernel, signature, {"HAS_BIAS": True, **constexprs}, 90, aligned, **options
    )
    ptx = compiled.asm["ptx"]
    assert re.search(r"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.bf16\.bf16", ptx)
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]+\], \[[^]]+\], 0x10", ptx)  # 16-byte copies
    assert "tensormap" not in ptx and compiled.metadata.global_scratch_size == 0
    assert compiled.metadata.shared <= 227 * 1024


def test_outputs_with_few_tiles_leave_the_tma_gemm(monkeypatch):
    """The measured rule (``bench/results/gemm-routes.md``): on 132 SMs, the 30M model's
    weight gradients (8-24 tiles) and a 78-tile one take cuBLAS; 128 tiles and up take TMA."""
    import torch

    monkeypatch.setattr(gemm, "multiprocessors", lambda device: 132)
    cpu = torch.device("cpu")
    assert not gemm.fills_device(512, 512, cpu)
    assert not gemm.fills_device(1536, 512, cpu)
    assert not gemm.fills_device(768, 3328, cpu)
    assert gemm.fills_device(2048, 2048, cpu)
    assert gemm.fills_device(32768, 512, cpu)
    assert not gemm.fills_device(8192, 256, cpu)


def _scales_read_as_e8m0(a, b, out_dtype, bias=None):
    """The product a tensor core computes if told the scale bytes are UE8M0."""
    import dataclasses

    import torch

    def reread(t):
        e8m0 = torch.exp2(t.scales.view(torch.uint8).float() - 127)
        return dataclasses.replace(t, scales=e8m0.to(torch.float8_e4m3fn))

    return nvfp4_matmul(reread(a), reread(b), out_dtype, bias)


def _nibbles_swapped(a, b, out_dtype, bias=None):
    import dataclasses

    def swap(t):
        return dataclasses.replace(t, codes=(t.codes >> 4) | (t.codes << 4))

    return nvfp4_matmul(swap(a), b, out_dtype, bias)


def _raises(a, b, out_dtype, bias=None):
    raise RuntimeError("PassManager::run failed")


def test_native_gemm_check_accepts_the_exact_product_and_catches_wrong_ones():
    """The first-use check of the Blackwell kernel, run here on stand-ins: the exact product
    passes; reading the E4M3 scales as UE8M0, swapping the nibble order, dropping the bias, a
    NaN output and a compiler error each fail it, with the reason."""
    import torch

    cpu = torch.device("cpu")
    assert blackwell.check_native_gemm(cpu, nvfp4_matmul) is None
    assert "relative error" in blackwell.check_native_gemm(cpu, _scales_read_as_e8m0)
    assert "relative error" in blackwell.check_native_gemm(cpu, _nibbles_swapped)
    assert "relative error" in blackwell.check_native_gemm(cpu, lambda a, b, dtype, bias: nvfp4_matmul(a, b, dtype))
    nan = blackwell.check_native_gemm(cpu, lambda *args: nvfp4_matmul(*args) * float("nan"))
    assert "non-finite" in nan
    assert blackwell.check_native_gemm(cpu, _raises) == "RuntimeError: PassManager::run failed"


def test_native_gemm_needs_blackwell_and_a_passed_check(monkeypatch):
    """The route decision on a CPU machine, the CUDA queries stubbed: never for a CPU tensor
    or another compute capability; on Blackwell only after the check passed, once per device;
    not decided during graph capture; a failed check warns and keeps the bf16 route."""
    import torch

    capability, capturing, checks = {0: (9, 0), 1: (10, 0), 2: (10, 0), 3: (8, 9)}, [True], []
    monkeypatch.setattr(blackwell, "native_ptx", lambda capability: blackwell.NATIVE_INSTRUCTION)
    monkeypatch.setattr(blackwell, "_available", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")

    def check(device):
        checks.append(device.index)
        return "relative error 1.00e+00 against the float64 product" if device.index == 2 else None

    monkeypatch.setattr(blackwell, "check_native_gemm", check)
    assert not blackwell.native_gemm_available(torch.device("cpu"))
    assert not blackwell.native_gemm_available(torch.device("cuda", 0))
    assert not blackwell.native_gemm_available(torch.device("cuda", 3))
    assert not blackwell.native_gemm_available(torch.device("cuda", 1)) and checks == []
    capturing[0] = False
    assert blackwell.native_gemm_available(torch.device("cuda", 1))
    assert blackwell.native_gemm_available(torch.device("cuda", 1)) and checks == [1]
    with pytest.warns(UserWarning, match="GPU 2 .*relative error.*bf16-operand route"):
        assert not blackwell.native_gemm_available(torch.device("cuda", 2))
    assert checks == [1, 2]


def _nvidia_case(rotate: bool):
    signature = {k: v for k, v in MS_EDEN_SIGNATURE.items() if k not in ("src_scales_ptr", "src_tensor_scale_ptr")}
    constexprs = {"AMAX_PASS": False, "ROTATE": rotate, "STOCHASTIC": True, "SPLITS": 1, "EMULATED": False,
                  "STORE_CODES": False, "STORE_DEQ": True, "DEBUG": False, "BLOCK_R": 32, "BLOCK_C": 128}  # fmt: skip
    return nvidia._nvidia_kernel, signature, constexprs


EXACT_KERNELS = {
    "quantize rtn": quantize_launch(True, FOUR_OVER_SIX=False, TILE_2D=False, BLOCK_R=8, BLOCK_C=256),
    "quantize 4/6": quantize_launch(True, FOUR_OVER_SIX=True, TILE_2D=False, BLOCK_R=8, BLOCK_C=256),
    "quantize 16x16 tiles": quantize_launch(False, FOUR_OVER_SIX=False, TILE_2D=True, BLOCK_R=16, BLOCK_C=128),
    # A backward GEMM's two operands in one launch: g (codes for a native GEMM) and a saved operand.
    "ms-eden pair, codes": ms_eden_launch(
        {"PACKED": False, "STORE_CODES": True, "STORE_DEQ": False},
        {"PACKED": True, "STORE_CODES": True, "STORE_DEQ": False},
    ),
    "ms-eden pair, bf16 operands": ms_eden_launch(
        {"PACKED": False, "STORE_CODES": False, "STORE_DEQ": True},
        {"PACKED": True, "STORE_CODES": False, "STORE_DEQ": True},
    ),
    "nvidia sr": _nvidia_case(rotate=False),
    "nvidia rht-16 + sr": _nvidia_case(rotate=True),
}


@pytest.mark.parametrize("name", EXACT_KERNELS)
def test_exact_kernels_compile_to_the_same_code_with_fp_fusion_on(name):
    """Inductor compiles the kernels it launches from a compiled graph with FP fusion on (it
    does not pass ``enable_fp_fusion=False`` on), which may contract a multiply and an add into
    an FMA the reference does not perform. The kernels write such products as ``mul_rn``, so
    their sm_90 machine code is the same either way."""
    kernel, signature, constexprs = EXACT_KERNELS[name]
    _needs_cuobjdump()
    unfused = sass(compile_kernel(kernel, signature, constexprs, 90, num_warps=4, **quantize.EXACT))
    fused = sass(compile_kernel(kernel, signature, constexprs, 90, num_warps=4, enable_fp_fusion=True))
    assert len(unfused) > 100 and any(op.startswith("FFMA") for op in unfused)
    assert fused == unfused


SHARED_MEMORY_KB = {80: 163, 86: 99, 89: 99, 90: 227, 100: 227, 120: 99}
"""Shared memory one block may take, by target (CUDA C Programming Guide, compute capabilities):
every route's kernels must fit the GPUs it runs on."""


@pytest.mark.parametrize("arch", SHARED_MEMORY_KB)
@pytest.mark.parametrize("name", EXACT_KERNELS)
def test_every_quantizer_compiles_for_every_gpu_generation(name, arch):
    """Ampere (sm_80, 86), Ada (89), Hopper (90) and Blackwell (100, 120) run the same quantizers:
    they compile (ptxas included), fit the generation's shared memory, keep the exact division,
    use Hopper's wgmma and TMA only where they exist, and spill no registers."""
    kernel, signature, constexprs = EXACT_KERNELS[name]
    compiled = compile_kernel(kernel, signature, constexprs, arch, num_warps=4, **quantize.EXACT)
    ptx = compiled.asm["ptx"]
    assert compiled.metadata.shared <= SHARED_MEMORY_KB[arch] * 1024
    assert "div.rn.f32" in ptx and "cvt.rn.satfinite.e4m3x2" not in ptx
    if arch != 90:
        assert "wgmma" not in ptx
    if arch < 90:
        assert "cp.async.bulk.tensor" not in ptx and "tensormap" not in ptx
    _needs_cuobjdump()
    resources = cubin_resources(compiled)
    assert resources["REG"] <= 255 and resources.get("LOCAL", 0) == 0, resources


@pytest.mark.parametrize(("arch", "instruction"), [(100, "tcgen05.mma"), (120, "mma.sync")])
def test_the_native_gemm_is_a_block_scaled_mma_on_both_blackwells(arch, instruction):
    """What :func:`blackwell.native_gemm_available` requires of the installed Triton before it
    routes a GPU to the native GEMM: datacenter Blackwell's ``tcgen05`` and consumer Blackwell's
    ``mma.sync`` block-scaled NVFP4 MMA, E2M1 operands with E4M3 scales per 16 elements."""
    ptx = blackwell.native_ptx((arch // 10, arch % 10))
    assert re.search(rf"{re.escape(instruction)}\S*{blackwell.NATIVE_INSTRUCTION}", ptx)
    if arch == 120:
        assert re.search(r"mma\.sync\.aligned\.\S+\.kind::mxf4nvf4\.block_scale\.scale_vec::4X\.f32\.e2m1\.e2m1", ptx)
        assert ".ue4m3" in ptx


@pytest.mark.parametrize("arch", [80, 89, 90])
def test_gpus_before_blackwell_have_no_native_fp4_mma(arch):
    try:
        ptx = blackwell.native_ptx((arch // 10, arch % 10))
    except Exception as error:  # sm_80/86: Triton rejects E4M3 scales outright
        assert "fp8e4nv not supported" in str(error)
        return
    assert blackwell.NATIVE_INSTRUCTION not in ptx


def test_ms_eden_programs_take_more_row_tiles_only_where_the_gpu_stays_filled():
    """Up to ``max_tiles`` row tiles per program, doubling while every SM keeps at least
    ``programs_per_sm`` programs (132 SMs, three per SM: 396 programs)."""
    per_program = [ms_eden.tiles_per_program(tiles, 4, 132, 3) for tiles in (1, 288, 791, 792, 1583, 1584, 10**6)]
    assert per_program == [1, 1, 1, 2, 2, 4, 4]
    assert ms_eden.tiles_per_program(10**6, 1, 132, 3) == 1
