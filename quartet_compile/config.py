"""Recipes (SPEC section 5) and the configuration object that selects one."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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


@dataclass(frozen=True)
class QuartetConfig:
    """A recipe, with 4/6 optionally forced on or off (``None``: the recipe's default).

    Forcing 4/6 only applies to recipes that round the forward to nearest with 1x16 blocks
    (``quartet2``, ``quartet2-no46``, ``fp4-forward``); asking it of another is an error.
    """

    recipe: Recipe = Recipe.QUARTET2
    four_over_six: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe", Recipe(self.recipe))
        if self.four_over_six is not None and _RECIPES[self.recipe][0] not in (
            ForwardQuant.RTN,
            ForwardQuant.FOUR_OVER_SIX,
        ):
            raise ValueError(f"four_over_six cannot be set for recipe {self.recipe.value!r}")

    @property
    def forward_quant(self) -> ForwardQuant:
        default = _RECIPES[self.recipe][0]
        if self.four_over_six is None:
            return default
        return ForwardQuant.FOUR_OVER_SIX if self.four_over_six else ForwardQuant.RTN

    @property
    def backward_quant(self) -> BackwardQuant:
        return _RECIPES[self.recipe][1]
