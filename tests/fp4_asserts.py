"""Bit-for-bit comparison of two NVFP4 tensors, shared by the GPU kernel tests and the
interpreter checks (which run as a script with this folder on ``sys.path``)."""

from __future__ import annotations

import torch

from quartet_compile.nvfp4 import NVFP4Tensor


def assert_same_fp4(kernel: NVFP4Tensor, ref: NVFP4Tensor) -> None:
    """Same tensor scale, same E4M3 scale bytes, same packed codes."""
    assert torch.equal(kernel.tensor_scale, ref.tensor_scale), (kernel.tensor_scale, ref.tensor_scale)
    assert torch.equal(kernel.scales.view(torch.uint8), ref.scales.view(torch.uint8)), "scales differ"
    assert torch.equal(kernel.codes, ref.codes), "codes differ"
