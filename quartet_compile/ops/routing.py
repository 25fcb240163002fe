"""Which implementation runs a quantized linear layer: the one place that decides.

``route(numerics, device, preference)`` returns a :class:`Route`: the Triton kernels (on CUDA GPUs
from sm_80, for quantized numerics; on Blackwell with the native FP4 GEMM once the device passed
its first-use check) or the pure-PyTorch reference (every other case, and whenever asked for).
The reason names the GEMM route: TMA on Hopper and datacenter Blackwell, cuBLAS elsewhere.
The graph pass calls it once per matmul, at compile time, so the decision (and the Blackwell
check, which launches kernels) never runs while a graph is being traced or captured.
"""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass

import torch

from ..nvfp4.numerics import Numerics


class KernelPreference(str, enum.Enum):
    """The ``kernel_preference`` option: ``auto`` takes the Triton kernels wherever they run,
    ``triton`` requires them (an error where they cannot run), ``reference`` never uses them."""

    AUTO = "auto"
    TRITON = "triton"
    REFERENCE = "reference"

    @classmethod
    def _missing_(cls, value: object) -> KernelPreference:
        raise ValueError(f"{value!r} is not a kernel preference; choose from {', '.join(p.value for p in cls)}")


class Implementation(str, enum.Enum):
    REFERENCE = "reference"
    TRITON = "triton"
    TRITON_NATIVE = "triton-native"
    """The Triton kernels with the native FP4 GEMM of Blackwell (sm_100/103, sm_120/121)."""


@dataclass(frozen=True)
class Route:
    implementation: Implementation
    reason: str

    @property
    def kernels(self) -> bool:
        return self.implementation is not Implementation.REFERENCE

    @property
    def native(self) -> bool:
        return self.implementation is Implementation.TRITON_NATIVE


MIN_CAPABILITY = (8, 0)
"""Oldest GPUs the kernels run on: Ampere, the first with bf16 tensor cores."""


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def route(numerics: Numerics, device: torch.device, preference: KernelPreference = KernelPreference.AUTO) -> Route:
    """The implementation of ``numerics`` on ``device`` under ``preference``, and why."""
    preference = KernelPreference(preference)
    if preference is KernelPreference.REFERENCE:
        return Route(Implementation.REFERENCE, "kernel_preference='reference'")
    why_not = None
    if not numerics.quantized:
        why_not = "nothing is quantized (F.linear)"
    elif device.type != "cuda":
        why_not = f"the kernels run on CUDA, this is {device.type}"
    elif not _triton_installed():
        why_not = "Triton is not installed"
    elif torch.cuda.get_device_capability(device) < MIN_CAPABILITY:
        major, minor = torch.cuda.get_device_capability(device)
        why_not = f"the kernels need sm_80 or newer (bf16 tensor cores), this is sm_{major}{minor}"
    if why_not is not None:
        if preference is KernelPreference.TRITON:
            raise ValueError(f"kernel_preference='triton' cannot be met: {why_not}")
        return Route(Implementation.REFERENCE, why_not)
    from ..kernels.blackwell import native_gemm_available
    from ..kernels.gemm import describe

    major, minor = torch.cuda.get_device_capability(device)
    if native_gemm_available(device):
        return Route(Implementation.TRITON_NATIVE, f"Triton kernels, native FP4 GEMM (sm_{major}{minor})")
    return Route(Implementation.TRITON, f"Triton kernels, {describe(device)} (sm_{major}{minor})")
