"""Launch configurations of every kernel, by kernel and GPU architecture, in one table.

A kernel looks its configuration up with :func:`config`; :func:`override` replaces entries for the
duration of a ``with`` block (what the tuning benchmarks use), instead of code mutating module
dictionaries. Entries under ``"default"`` apply to every architecture without an entry of its
own; the entries were tuned on Hopper (sm_90) and serve every architecture until one is tuned.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import torch

DEFAULT = "default"

_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    # Forward quantizer: statistics pass (tensor amax) and block pass (1x16 blocks, and 16x16
    # tiles for the nvidia recipe's weights: one tile row per program).
    "stats": {DEFAULT: {"BLOCK_SIZE": 16384, "num_warps": 8}},
    "quantize": {DEFAULT: {"BLOCK_R": 8, "BLOCK_C": 256, "num_warps": 4}},
    "quantize_tile_2d": {DEFAULT: {"BLOCK_R": 16, "BLOCK_C": 128, "num_warps": 4}},
    # MS-EDEN, one entry per pass: each program owns one 128-column group and up to MAX_TILES
    # tiles of BLOCK_R rows of it, as many as leave PROGRAMS_PER_SM programs per SM
    # (ms_eden.tiles_per_program). No register cap: Inductor's launches drop one. The amax pass
    # takes the operands of all of a backward's GEMMs in one launch, the quantize pass those of
    # GEMMS of them (ms_eden.ms_eden_gemms). The quantize pass stops at two tiles: four were
    # within 1% with Triton 3.6, and Triton 3.9 compiles them to more registers than two
    # programs per SM allow (docs/kernels.md). TWIN: the amax pass reads g once for g and g^T,
    # one 128 x 128 tile per program rotated along both axes.
    "ms_eden_amax": {DEFAULT: {"BLOCK_R": 64, "MAX_TILES": 4, "PROGRAMS_PER_SM": 3, "TWIN": True, "num_warps": 8}},
    "ms_eden_quantize": {DEFAULT: {"BLOCK_R": 64, "MAX_TILES": 2, "PROGRAMS_PER_SM": 3, "GEMMS": 2, "num_warps": 8}},
    # nvidia recipe's backward quantizers: a rotated tile is one [BLOCK_R * BLOCK_C / 16, 16] x
    # [16, 16] tensor-core product.
    "nvidia": {DEFAULT: {"BLOCK_R": 32, "BLOCK_C": 128, "num_warps": 4}},
    "dequantize": {DEFAULT: {"BLOCK_R": 64, "BLOCK_C": 128, "num_warps": 4}},
    # Persistent TMA GEMM of the unscaled bf16 operands (float32 outputs take one stage less:
    # their epilogue staging needs twice the shared memory).
    "tma_gemm": {
        DEFAULT: {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}
    },
    "load_gemm": {
        DEFAULT: {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8, "num_stages": 4}
    },
    "scale_epilogue": {DEFAULT: {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8}},
    "blackwell_gemm": {DEFAULT: {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3}},
}


@functools.cache
def architecture(device: torch.device) -> str:
    """``sm_90``-style name of a CUDA device's architecture (``cpu`` for other devices)."""
    if device.type != "cuda":
        return device.type
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """SM count of a CUDA device (1 for other devices), cached: the property query costs host
    time on every launch that sizes its grid by it otherwise."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def config(kernel: str, device: torch.device | None = None) -> dict[str, Any]:
    """A copy of ``kernel``'s configuration for ``device``'s architecture (or the default)."""
    entries = _TABLE[kernel]
    arch = architecture(device) if device is not None else DEFAULT
    return dict(entries.get(arch, entries[DEFAULT]))


def fingerprint() -> str:
    """SHA-256 of the table as it stands, overrides included: compile caches key our graphs by it,
    since a graph traced under one configuration has that configuration's launches baked in."""
    return hashlib.sha256(json.dumps(_TABLE, sort_keys=True).encode()).hexdigest()


@contextlib.contextmanager
def override(kernel: str, values: dict[str, Any], arch: str = DEFAULT) -> Iterator[None]:
    """Use ``values`` (merged over the current entry) for ``kernel`` on ``arch`` inside the block.
    Kernels compiled meanwhile stay cached under their own configuration."""
    entries = _TABLE[kernel]
    previous = entries.get(arch)
    entries[arch] = {**(previous or entries[DEFAULT]), **values}
    try:
        yield
    finally:
        if previous is None:
            del entries[arch]
        else:
            entries[arch] = previous
