"""Static activation scales for W4A4 checkpoints: the largest input magnitude each quantized
layer sees on calibration batches.

Engines quantize a W4A4 layer's input with per-block scales computed at run time under one
static tensor scale per layer, ``amax / (6 * 448)`` (E2M1's and E4M3's largest magnitudes), that
the checkpoint carries. The amax is taken of the input in the dtype the layer's matmul receives
(``dtype``, as autocast casts it), over every calibration batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..nvfp4.format import E2M1_MAX, E4M3_MAX


def input_amax(
    model: nn.Module, modules: Sequence[str], batches: Iterable[Any], dtype: torch.dtype = torch.bfloat16
) -> dict[str, Tensor]:
    """float32 ``max |input|`` of each of ``modules`` over ``model(batch)`` for every batch (a
    tensor, a tuple of positional arguments or a dict of keyword arguments), without autograd."""
    amax = {name: torch.zeros((), dtype=torch.float32) for name in modules}

    def record(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            seen = args[0].detach().to(dtype).abs().amax().float().cpu()
            amax[name] = torch.maximum(amax[name], seen)

        return hook

    handles = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in modules]
    calls = 0
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, dict):
                    model(**batch)
                elif isinstance(batch, tuple | list):
                    model(*batch)
                else:
                    model(batch)
                calls += 1
    finally:
        for handle in handles:
            handle.remove()
    if not calls:
        raise ValueError("calibration needs at least one batch")
    return amax


def activation_scale(amax: Tensor) -> Tensor:
    """The decode tensor scale of an input of largest magnitude ``amax`` (1 where it is 0, so that
    the encode scale stays finite)."""
    scale = amax.float() / (E2M1_MAX * E4M3_MAX)
    return torch.where(scale > 0, scale, torch.ones_like(scale))
