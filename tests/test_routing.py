"""One decision of what runs a quantized matmul (``ops.route``) and the user's switch over it
(``kernel_preference``)."""

from __future__ import annotations

import pytest
import torch

from quartet_compile import KernelPreference, QuartetConfig, backend, explain
from quartet_compile.kernels import blackwell, gemm
from quartet_compile.ops import Implementation, route, routing

from .helpers import token_batches

QUARTET2 = QuartetConfig().numerics
BF16 = QuartetConfig(recipe="bf16").numerics
CUDA = torch.device("cuda", 0)


CAPABILITIES = {0: (9, 0), 1: (10, 0), 2: (12, 0), 3: (8, 9), 4: (8, 0), 5: (7, 5)}
"""The GPUs of the stubbed machine, by index."""


@pytest.fixture
def a_cuda_gpu(monkeypatch):
    """Routing as on a CUDA machine with one GPU of every kind (:data:`CAPABILITIES`), on which
    the native GEMM passes its check wherever Triton emits the block-scaled MMA."""
    monkeypatch.setattr(blackwell, "_available", {})
    monkeypatch.setattr(gemm, "_has_tma", lambda device: CAPABILITIES[device.index][0] in gemm.TMA_MAJORS)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: CAPABILITIES[getattr(d, "index", d)])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    monkeypatch.setattr(blackwell, "check_native_gemm", lambda device: None)
    monkeypatch.setattr(blackwell, "native_ptx", lambda capability: blackwell.NATIVE_INSTRUCTION)  # as Triton 3.9
    monkeypatch.setattr(routing, "_triton_installed", lambda: True)


@pytest.mark.parametrize(
    ("index", "implementation", "reason"),
    [
        (0, Implementation.TRITON, "TMA GEMM where the output fills the GPU, else cuBLAS (sm_90)"),
        (1, Implementation.TRITON_NATIVE, "native FP4 GEMM (sm_100)"),
        (2, Implementation.TRITON_NATIVE, "native FP4 GEMM (sm_120)"),
        (3, Implementation.TRITON, "cuBLAS GEMM (no TMA GEMM below sm_90 or on consumer Blackwell) (sm_89)"),
        (4, Implementation.TRITON, "cuBLAS GEMM (no TMA GEMM below sm_90 or on consumer Blackwell) (sm_80)"),
        (5, Implementation.REFERENCE, "the kernels need sm_80 or newer (bf16 tensor cores), this is sm_75"),
    ],
)
def test_every_gpu_generation_has_a_route_and_a_reason(index, implementation, reason, a_cuda_gpu):
    decided = route(QUARTET2, torch.device("cuda", index))
    assert decided.implementation is implementation and decided.reason.endswith(reason)


def test_an_emulated_block_scaled_mma_keeps_the_bf16_route(a_cuda_gpu, monkeypatch):
    """A Triton release that lowers ``dot_scaled`` on consumer Blackwell without the native
    instruction computes the right numbers slowly: the check passes, the route is not taken."""
    monkeypatch.setattr(blackwell, "native_ptx", lambda capability: "mma.sync.aligned.m16n8k16.row.col.f32.bf16")
    with pytest.warns(UserWarning, match="emulates the block-scaled MMA on sm_120"):
        assert route(QUARTET2, torch.device("cuda", 2)).implementation is Implementation.TRITON


def test_auto_takes_the_kernels_on_cuda_and_the_reference_elsewhere(a_cuda_gpu):
    assert route(QUARTET2, CUDA).implementation is Implementation.TRITON
    assert route(QUARTET2, torch.device("cuda", 1)).implementation is Implementation.TRITON_NATIVE
    cpu = route(QUARTET2, torch.device("cpu"))
    assert cpu.implementation is Implementation.REFERENCE and "CUDA" in cpu.reason
    assert route(BF16, CUDA).implementation is Implementation.REFERENCE


def test_preferences_force_or_forbid_the_kernels(a_cuda_gpu):
    assert route(QUARTET2, CUDA, KernelPreference.REFERENCE).implementation is Implementation.REFERENCE
    assert route(QUARTET2, CUDA, "triton").kernels
    with pytest.raises(ValueError, match="kernel_preference='triton' cannot be met: the kernels run on CUDA"):
        route(QUARTET2, torch.device("cpu"), "triton")
    with pytest.raises(ValueError, match="'gpu' is not a kernel preference; choose from auto, triton, reference"):
        QuartetConfig(kernel_preference="gpu")


def test_the_pass_records_the_route_and_explain_shows_it():
    tokens = token_batches(1)[0][:, :-1]
    from quartet_bench.models import Llama

    report = explain(Llama(), tokens, options={"kernel_preference": "reference"}, verbose=False)
    assert {r.implementation for r in report.quantized} == {"reference"}
    assert "runs on" in str(report)
    with pytest.raises(Exception, match="kernel_preference='triton' cannot be met"):
        torch.compile(Llama(), backend=backend(kernel_preference="triton", inner_backend="eager"))(tokens)
