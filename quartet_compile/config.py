"""Recipes (SPEC section 5) and the configuration object that selects one."""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args


class Recipe(str, enum.Enum):
    """Which numerics a quantized linear layer uses."""

    QUARTET2 = "quartet2"
    QUARTET2_NO46 = "quartet2-no46"
    NVIDIA = "nvidia"
    FP4_FORWARD = "fp4-forward"
    BF16 = "bf16"


class ForwardQuant(str, enum.Enum):
    NONE = "none"
    RTN = "rtn"
    FOUR_OVER_SIX = "4/6"
    NVIDIA = "rtn, 16x16 weight blocks"


class BackwardQuant(str, enum.Enum):
    NONE = "none"
    MS_EDEN = "ms-eden (rht-128)"
    NVIDIA = "sr, rht-16 on wgrad"


_RECIPES: dict[Recipe, tuple[ForwardQuant, BackwardQuant]] = {
    Recipe.QUARTET2: (ForwardQuant.FOUR_OVER_SIX, BackwardQuant.MS_EDEN),
    Recipe.QUARTET2_NO46: (ForwardQuant.RTN, BackwardQuant.MS_EDEN),
    Recipe.NVIDIA: (ForwardQuant.NVIDIA, BackwardQuant.NVIDIA),
    Recipe.FP4_FORWARD: (ForwardQuant.FOUR_OVER_SIX, BackwardQuant.NONE),
    Recipe.BF16: (ForwardQuant.NONE, BackwardQuant.NONE),
}


InnerBackend = Literal["inductor", "aot_eager", "eager"]
_INNER_BACKENDS = get_args(InnerBackend)


@dataclass(frozen=True)
class QuartetConfig:
    """How the ``quartet`` backend quantizes a model's linear layers.

    - ``recipe``: the numerics (SPEC section 5).
    - ``four_over_six``: force 4/6 on or off (``None``: the recipe's default). Only recipes that
      round the forward to nearest with 1x16 blocks accept it.
    - ``keep_bf16``: ``fnmatch`` patterns of module paths (or weight names) whose matmuls stay in
      high precision; by default the output head.
    - ``min_features``: matmuls whose ``K`` or ``N`` is smaller stay in high precision (padding
      and quantization overheads outweigh the gain there).
    - ``seed``: ``None`` draws backward randomness from PyTorch's default generator
      (``torch.manual_seed`` reproduces a run); an int uses a generator of the backend's own,
      seeded once, so other random ops (dropout, data order) cannot shift it.
    - ``inner_backend``: what compiles the rewritten graph: ``inductor`` (default),
      ``aot_eager`` (AOTAutograd without codegen, for debugging) or ``eager``.
    """

    recipe: Recipe = Recipe.QUARTET2
    four_over_six: bool | None = None
    keep_bf16: tuple[str, ...] = ("lm_head", "*.lm_head")
    min_features: int = 128
    seed: int | None = None
    inner_backend: InnerBackend = "inductor"

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe", Recipe(self.recipe))
        if isinstance(self.keep_bf16, str):
            object.__setattr__(self, "keep_bf16", (self.keep_bf16,))
        object.__setattr__(self, "keep_bf16", tuple(self.keep_bf16))
        if self.four_over_six is not None and _RECIPES[self.recipe][0] not in (
            ForwardQuant.RTN,
            ForwardQuant.FOUR_OVER_SIX,
        ):
            raise ValueError(f"four_over_six cannot be set for recipe {self.recipe.value!r}")
        if self.inner_backend not in _INNER_BACKENDS:
            raise ValueError(f"inner_backend must be one of {_INNER_BACKENDS}, got {self.inner_backend!r}")
        if self.min_features < 0:
            raise ValueError(f"min_features must be >= 0, got {self.min_features}")

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> QuartetConfig:
        """Build from ``torch.compile(..., options={...})``; unknown keys are an error."""
        options = dict(options or {})
        unknown = set(options) - {f.name for f in fields(cls)}
        if unknown:
            valid = ", ".join(f.name for f in fields(cls))
            raise ValueError(f"unknown quartet option(s) {sorted(unknown)}; valid options: {valid}")
        return cls(**options)

    @property
    def forward_quant(self) -> ForwardQuant:
        default = _RECIPES[self.recipe][0]
        if self.four_over_six is None:
            return default
        return ForwardQuant.FOUR_OVER_SIX if self.four_over_six else ForwardQuant.RTN

    @property
    def backward_quant(self) -> BackwardQuant:
        return _RECIPES[self.recipe][1]
