"""A recipe resolved into plain numerics: which quantizer the forward and the backward use, the
constants of each (SPEC sections 2-3), what the forward saves and which shapes it takes.

:class:`Numerics` is what the reference and the kernels take, never the user-facing config
(which also holds pass-only settings); it crosses the op boundary as one string
(:meth:`Numerics.encode` / :meth:`Numerics.decode`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .format import BLOCK

FOUR_OVER_SIX_SCALE_MAX = 256.0
"""E4M3 scale ceiling of 4/6: leaves headroom for the x1.5 alternative scale."""
FOUR_OVER_SIX_ALT_FACTOR = 6.0 / 4.0
MS_EDEN_SCALE_MAX = 256.0
MS_EDEN_SCALE_OVERRIDE = (17.0 / 16.0) * 0.93
SR_SCALE_OVERRIDE = 17.0 / 16.0
"""Headroom of E2M1 stochastic rounding: every scaled value stays inside [-6, 6]."""
EDEN_GROUP = 128
"""Length of the random Hadamard transform of MS-EDEN, and of its EDEN correction groups."""
NVIDIA_RHT_SIZE = 16
"""Length of the random Hadamard transform of the ``nvidia`` recipe's weight gradient."""


def misaligned(size: int, multiple: int) -> bool:
    """Whether ``size`` is known not to be a multiple of ``multiple``. A symbolic size (a dynamic
    dimension while a graph is traced) counts as aligned: the callers pad it, and testing it
    would add a guard to the compiled graph."""
    return isinstance(size, int) and size % multiple != 0


class ForwardQuant(str, enum.Enum):
    NONE = "none"
    RTN = "rtn"
    FOUR_OVER_SIX = "4/6"
    NVIDIA = "rtn, 16x16 weight blocks"


class BackwardQuant(str, enum.Enum):
    NONE = "none"
    MS_EDEN = "ms-eden (rht-128)"
    NVIDIA = "sr, rht-16 on wgrad"


@dataclass(frozen=True)
class Numerics:
    """How one quantized linear layer computes: the forward and backward quantizers."""

    forward: ForwardQuant
    backward: BackwardQuant

    @property
    def quantized(self) -> bool:
        return self.forward is not ForwardQuant.NONE

    @property
    def saves_x(self) -> bool:
        """Whether the backward reads the high-precision activation (``bf16``, and ``nvidia``,
        whose weight gradient rotates it)."""
        return not self.quantized or self.backward is BackwardQuant.NVIDIA

    @property
    def saves_weight(self) -> bool:
        """Whether the backward reads the high-precision weight (``bf16`` only)."""
        return not self.quantized

    @property
    def saves_xq(self) -> bool:
        return self.quantized and not self.saves_x

    @property
    def saves_wq(self) -> bool:
        return self.quantized

    @property
    def multiples(self) -> dict[str, int]:
        """What each GEMM dimension must divide into (``T`` tokens, ``K`` in features, ``N`` out
        features); the backend pads or keeps high precision where this fails."""
        multiples = {"T": 1, "K": 1, "N": 1}
        if self.quantized:
            multiples["K"] = BLOCK
        if self.backward is BackwardQuant.MS_EDEN:
            multiples.update(T=EDEN_GROUP, N=EDEN_GROUP)
        if self.backward is BackwardQuant.NVIDIA:
            multiples.update(T=NVIDIA_RHT_SIZE, N=BLOCK)
        return multiples

    def check_shapes(self, tokens: int, in_features: int, out_features: int) -> None:
        """Raise ``ValueError`` naming the dimension these numerics cannot take."""
        sizes = {"T": tokens, "K": in_features, "N": out_features}
        for dim, multiple in self.multiples.items():
            if misaligned(sizes[dim], multiple):
                raise ValueError(
                    f"{self} needs {dim} to be a multiple of {multiple}, "
                    f"got T={tokens}, K={in_features}, N={out_features}"
                )

    def encode(self) -> str:
        """The numerics as one string argument of the ``quartet`` ops."""
        return f"{self.forward.name}/{self.backward.name}"

    @staticmethod
    def decode(text: str) -> Numerics:
        """Inverse of :meth:`encode` (about 1 us; uncached, so that Dynamo traces it where a
        compiled model calls the eager API)."""
        forward, backward = text.split("/")
        return Numerics(ForwardQuant[forward], BackwardQuant[backward])

    def __str__(self) -> str:
        return f"forward {self.forward.value}, backward {self.backward.value}"
