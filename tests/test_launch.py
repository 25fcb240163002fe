"""The cached kernel launcher (``kernels/launch.py``): its call signature must separate every
argument difference that makes Triton compile a different kernel, and its launches must equal
``kernel[grid]``'s."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton import knobs  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from quartet_compile.kernels import launch as launcher  # noqa: E402


@triton.jit
def _scaled_copy(src_ptr, dst_ptr, n, factor, BLOCK: tl.constexpr, NEGATE: tl.constexpr = False):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(src_ptr + offsets, mask=offsets < n) * factor
    tl.store(dst_ptr + offsets, -x if NEGATE else x, mask=offsets < n)


def test_signature_separates_dtype_alignment_and_scalar_values():
    x = torch.zeros(64)
    distinct = (x, x[1:], x[2:], x.double(), x.to(torch.bfloat16), 1, 16, 17, True, 1.0, None)
    assert len(set(launcher._signature(distinct))) == len(distinct)
    assert launcher._signature((x[4:], 0.5)) == launcher._signature((torch.ones(8), 3.0))  # aligned; floats


def test_trailing_arguments_follow_parameter_order_with_defaults():
    assert launcher._trailing_arguments(_scaled_copy, 4, {"BLOCK": 128, "num_warps": 4}) == (128, False)
    assert launcher._trailing_arguments(_scaled_copy, 4, {"NEGATE": True, "BLOCK": 64}) == (64, True)
    with pytest.raises(TypeError, match="factor"):
        launcher._trailing_arguments(_scaled_copy, 3, {"BLOCK": 64})


@given(st.integers(0, 2**40), st.integers(1, 2**20))
def test_cdiv_is_the_smallest_count_of_b_sized_blocks_covering_a(a, b):
    blocks = launcher.cdiv(a, b)
    assert blocks * b >= a and (blocks - 1) * b < max(a, 1)


def _expected(src: torch.Tensor, factor: float, negate: bool) -> torch.Tensor:
    return -(src * factor) if negate else src * factor


@pytest.mark.gpu
def test_cached_launches_equal_jit_launches_and_skip_the_jit_path(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    monkeypatch.setattr(launcher, "_compiled", {})
    calls = []
    original = JITFunction.run
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    n = 1000
    for step in range(4):
        src = torch.randn(n + 8, device="cuda")
        dst = torch.full_like(src, float("nan"))
        factor = float(step + 2)
        launcher.launch(_scaled_copy, (triton.cdiv(n, 128),), src, dst, n, factor, BLOCK=128, NEGATE=step % 2 == 1)
        assert torch.equal(dst[:n], _expected(src[:n], factor, step % 2 == 1))
        assert dst[n:].isnan().all()
    assert len(calls) == 2  # one JIT launch per NEGATE value, then the cached launcher


@pytest.mark.gpu
def test_misaligned_views_get_their_own_kernel():
    """A view 4 bytes into its storage must not reuse the kernel compiled for 16-byte-aligned
    pointers (its vectorized accesses would fault or read the wrong elements)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    n = 4096
    for offset in (0, 1, 0, 1, 2, 4):
        storage = torch.randn(n + 8, device="cuda")
        src = storage[offset : offset + n]
        out = torch.full((n + 8,), float("nan"), device="cuda")
        dst = out[offset : offset + n]
        launcher.launch(_scaled_copy, (triton.cdiv(n, 512),), src, dst, n, 0.5, BLOCK=512)
        torch.cuda.synchronize()
        assert torch.equal(dst, src * 0.5), offset


@pytest.mark.gpu
def test_registered_launch_hooks_still_see_every_launch():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    seen = []
    hook = seen.append
    src = torch.randn(256, device="cuda")
    dst = torch.empty_like(src)
    launcher.launch(_scaled_copy, (2,), src, dst, 256, 1.0, BLOCK=128)
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        launcher.launch(_scaled_copy, (2,), src, dst, 256, 1.0, BLOCK=128)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    assert len(seen) == 1
