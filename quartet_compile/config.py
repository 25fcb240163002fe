"""Recipes (SPEC section 5) and the configuration object that selects one."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal, get_args

from .nvfp4.numerics import BackwardQuant, ForwardQuant, Numerics
from .ops.routing import KernelPreference


class Recipe(str, enum.Enum):
    """Which numerics a quantized linear layer uses."""

    QUARTET2 = "quartet2"
    QUARTET2_NO46 = "quartet2-no46"
    NVIDIA = "nvidia"
    FP4_FORWARD = "fp4-forward"
    BF16 = "bf16"

    @classmethod
    def _missing_(cls, value: object) -> Recipe:
        raise ValueError(f"{value!r} is not a recipe; choose from {', '.join(r.value for r in cls)}")


_RECIPES: dict[Recipe, Numerics] = {
    Recipe.QUARTET2: Numerics(ForwardQuant.FOUR_OVER_SIX, BackwardQuant.MS_EDEN),
    Recipe.QUARTET2_NO46: Numerics(ForwardQuant.RTN, BackwardQuant.MS_EDEN),
    Recipe.NVIDIA: Numerics(ForwardQuant.NVIDIA, BackwardQuant.NVIDIA),
    Recipe.FP4_FORWARD: Numerics(ForwardQuant.FOUR_OVER_SIX, BackwardQuant.NONE),
    Recipe.BF16: Numerics(ForwardQuant.NONE, BackwardQuant.NONE),
}


InnerBackend = Literal["inductor", "aot_eager", "eager"]
_INNER_BACKENDS = get_args(InnerBackend)


def _patterns(name: str, value: Any) -> tuple[str, ...]:
    """A pattern or an iterable of patterns -> a tuple of strings (a clear error otherwise)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, bytes):
        patterns = tuple(value)
        if all(isinstance(p, str) for p in patterns):
            return patterns
    raise TypeError(f"quartet option {name!r} takes a string or a list of strings (fnmatch patterns), got {value!r}")


def _check_type(name: str, value: Any, allowed: tuple[type, ...], accepted: str) -> None:
    # bool is an int subclass: an int option must not silently take True.
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise TypeError(f"quartet option {name!r} takes {accepted}, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class QuartetConfig:
    """How the ``quartet`` backend quantizes a model's linear layers.

    - ``recipe``: the numerics (SPEC section 5).
    - ``four_over_six``: force 4/6 on or off (``None``: the recipe's default). Only recipes that
      round the forward to nearest with 1x16 blocks accept it.
    - ``keep_bf16``: ``fnmatch`` patterns of module paths (or weight names) whose matmuls stay in
      high precision. Paths are those of ``model.named_modules()`` of the model you compiled.
    - ``keep_output_head``: keep the model's output head in high precision: the projection to the
      vocabulary logits, found from what it is (``get_output_embeddings()`` of a ``transformers``
      model, a weight tied to the input embedding, or a projection to the embedding's vocabulary
      whose result is the graph's output or goes into its loss), whatever its name.
    - ``min_features``: matmuls whose ``K`` or ``N`` is smaller stay in high precision (padding
      and quantization overheads outweigh the gain there).
    - ``seed``: ``None`` draws backward randomness from PyTorch's default generator
      (``torch.manual_seed`` reproduces a run); an int uses a generator of the backend's own,
      seeded once per ``torch.compile`` call, so other random ops (dropout, data order) cannot
      shift it.
    - ``weight_buffers``: ``fnmatch`` patterns of buffer names to treat as weights. Only
      parameters are weights otherwise: a matmul of two activations stays in high precision.
    - ``kernel_preference``: ``auto`` (the Triton kernels wherever they run, else the
      reference), ``triton`` (an error where they cannot run) or ``reference`` (the pure-PyTorch
      numerics everywhere, for debugging and comparison).
    - ``inner_backend``: what compiles the rewritten graph: ``inductor`` (default),
      ``aot_eager`` (AOTAutograd without codegen, for debugging) or ``eager``.
    - ``cpp_wrapper``: whether Inductor launches the compiled graphs' kernels from generated C++
      (``torch._inductor.config.cpp_wrapper``) or from Python. ``None`` (default): C++ for CUDA
      graphs run without CUDA graphs (the default mode), where the host's time per launch bounds
      a small model's step; Inductor's setting elsewhere. It costs a C++ compile per graph at
      the first step (see docs/results.md).
    - ``cache_inference_weights``: where no backward will run (``torch.no_grad``,
      ``torch.inference_mode``, nothing requiring grad), quantize each weight once per parameter
      version and keep it (the same numbers; the FP4 weight, and on GPUs without FP4 tensor cores
      its bf16 GEMM operand, stay in memory until the weight changes or is freed). Off by default:
      it saves the weights' quantizer time on the device but adds host time per layer (a Python
      check of the weight's version), and graphs using it run without CUDA graphs; it pays off
      where the device, not the host, bounds an evaluation (see docs/results.md).
    - ``fuse_projections``: run the sibling projections of one input (q/k/v, gate/up, in
      ``transformers`` naming) as one quantized GEMM on their concatenated weights, as inference
      engines run them: each group's weights share one tensor scale, so that an export is the
      trained weights bit for bit, and the input is quantized once per group instead of once per
      projection. The backward then quantizes each group's gradient as one tensor (one tensor
      scale) and sums its input gradient inside the GEMM. Off by default: it changes the numbers.
    """

    recipe: Recipe = Recipe.QUARTET2
    four_over_six: bool | None = None
    keep_bf16: tuple[str, ...] = ()
    keep_output_head: bool = True
    min_features: int = 128
    seed: int | None = None
    weight_buffers: tuple[str, ...] = ()
    kernel_preference: KernelPreference = KernelPreference.AUTO
    inner_backend: InnerBackend = "inductor"
    cpp_wrapper: bool | None = None
    cache_inference_weights: bool = False
    fuse_projections: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, str):
            raise TypeError(f"quartet option 'recipe' takes a recipe name, got {self.recipe!r}")
        object.__setattr__(self, "recipe", Recipe(self.recipe))
        if not isinstance(self.kernel_preference, str):
            raise TypeError(f"quartet option 'kernel_preference' takes a name, got {self.kernel_preference!r}")
        object.__setattr__(self, "kernel_preference", KernelPreference(self.kernel_preference))
        object.__setattr__(self, "keep_bf16", _patterns("keep_bf16", self.keep_bf16))
        object.__setattr__(self, "weight_buffers", _patterns("weight_buffers", self.weight_buffers))
        _check_type("four_over_six", self.four_over_six, (bool, type(None)), "True, False or None")
        _check_type("keep_output_head", self.keep_output_head, (bool,), "True or False")
        _check_type("min_features", self.min_features, (int,), "a non-negative int")
        _check_type("seed", self.seed, (int, type(None)), "an int or None")
        _check_type("cpp_wrapper", self.cpp_wrapper, (bool, type(None)), "True, False or None")
        _check_type("cache_inference_weights", self.cache_inference_weights, (bool,), "True or False")
        _check_type("fuse_projections", self.fuse_projections, (bool,), "True or False")
        if self.four_over_six is not None and _RECIPES[self.recipe].forward not in (
            ForwardQuant.RTN,
            ForwardQuant.FOUR_OVER_SIX,
        ):
            raise ValueError(
                f"quartet option 'four_over_six' applies to the round-to-nearest forward of quartet2, "
                f"quartet2-no46 and fp4-forward, not to recipe {self.recipe.value!r}"
            )
        if self.inner_backend not in _INNER_BACKENDS:
            raise ValueError(
                f"quartet option 'inner_backend' takes one of {', '.join(_INNER_BACKENDS)}, got {self.inner_backend!r}"
            )
        if self.min_features < 0:
            raise ValueError(f"quartet option 'min_features' takes a non-negative int, got {self.min_features}")

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
    def numerics(self) -> Numerics:
        """The recipe (with the ``four_over_six`` override) resolved into plain numerics."""
        numerics = _RECIPES[self.recipe]
        if self.four_over_six is None:
            return numerics
        forward = ForwardQuant.FOUR_OVER_SIX if self.four_over_six else ForwardQuant.RTN
        return Numerics(forward, numerics.backward)
