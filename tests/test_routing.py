"""One decision of what runs a quantized matmul (``ops.route``) and the user's switch over it
(``kernel_preference``)."""

from __future__ import annotations

import pytest
import torch

from quartet_compile import KernelPreference, QuartetConfig, backend, explain
from quartet_compile.kernels import blackwell
from quartet_compile.ops import Implementation, route, routing

from .helpers import token_batches

QUARTET2 = QuartetConfig().numerics
BF16 = QuartetConfig(recipe="bf16").numerics
CUDA = torch.device("cuda", 0)


@pytest.fixture
def a_cuda_gpu(monkeypatch):
    """Routing as on a CUDA machine whose GPU is Hopper (index 0) or datacenter Blackwell (1)."""
    capability = {0: (9, 0), 1: (10, 0)}
    monkeypatch.setattr(blackwell, "_available", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(blackwell, "check_native_gemm", lambda device: None)
    monkeypatch.setattr(routing, "_triton_installed", lambda: True)


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
