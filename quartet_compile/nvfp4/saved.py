"""What the quantized linear layer's forward keeps for its backward, and the one codec that
carries it across the op boundary as plain tensors.

The layout is six tensors, the codes, block scales and tensor scale of the FP4 activation and
then of the FP4 weight; a part the numerics do not save is an empty tensor. The high-precision
activation and weight travel separately, only where the numerics save them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .format import BLOCK, NVFP4Tensor
from .numerics import Numerics

FP4_PARTS = 6


def _parts(q: NVFP4Tensor | None, like: Tensor) -> list[Tensor]:
    if q is None:
        return [
            like.new_empty(0, dtype=torch.uint8),
            like.new_empty(0, dtype=torch.float8_e4m3fn),
            like.new_empty(0, dtype=torch.float32),
        ]
    return [q.codes.contiguous(), q.scales.contiguous(), q.tensor_scale]


@dataclass(frozen=True)
class Saved:
    """The FP4 operands, and the high-precision ones only where the numerics' backward reads
    them (``nvidia``: ``x``; ``bf16``: both)."""

    x: Tensor | None = None
    weight: Tensor | None = None
    xq: NVFP4Tensor | None = None
    wq: NVFP4Tensor | None = None

    def fp4_tensors(self, like: Tensor) -> list[Tensor]:
        """The six FP4 parts, contiguous (as the ops' fake implementations declare them)."""
        return _parts(self.xq, like) + _parts(self.wq, like)

    @staticmethod
    def fake_fp4_tensors(numerics: Numerics, x: Tensor, out_features: int) -> list[Tensor]:
        """Empty tensors shaped as :meth:`fp4_tensors` of ``x [T, K]`` and a weight ``[N, K]``."""
        tokens, k = x.shape

        def parts(rows: int, present: bool) -> list[Tensor]:
            if not present:
                return _parts(None, x)
            return [
                x.new_empty(rows, k // 2, dtype=torch.uint8),
                x.new_empty(rows, k // BLOCK, dtype=torch.float8_e4m3fn),
                x.new_empty((), dtype=torch.float32),
            ]

        return parts(tokens, numerics.saves_xq) + parts(out_features, numerics.saves_wq)

    @staticmethod
    def in_features(numerics: Numerics, weight: Tensor | None, parts: tuple[Tensor, ...]) -> int:
        """``K`` of the saved layer, from the FP4 weight's codes or the weight itself."""
        return 2 * parts[3].shape[1] if numerics.saves_wq else weight.shape[1]

    @classmethod
    def decode(
        cls,
        numerics: Numerics,
        x: Tensor | None,
        weight: Tensor | None,
        parts: tuple[Tensor, ...],
        tokens: int,
        out_features: int,
        dtypes: tuple[torch.dtype, torch.dtype],
    ) -> Saved:
        """Inverse of :meth:`fp4_tensors`; ``tokens``, ``out_features`` and ``dtypes`` describe the
        original activation ``[T, K]`` and weight ``[N, K]``."""
        k = cls.in_features(numerics, weight, parts)

        def rebuild(i: int, rows: int, dtype: torch.dtype) -> NVFP4Tensor:
            return NVFP4Tensor(*parts[i : i + 3], torch.Size((rows, k)), dtype)

        return cls(
            x=x if numerics.saves_x else None,
            weight=weight if numerics.saves_weight else None,
            xq=rebuild(0, tokens, dtypes[0]) if numerics.saves_xq else None,
            wq=rebuild(3, out_features, dtypes[1]) if numerics.saves_wq else None,
        )
