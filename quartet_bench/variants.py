"""What a comparison compares: the variants of one model (eager, Inductor BF16, each quartet
recipe, the peers), and the ``torch.compile`` backend of each."""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from quartet_compile import QuartetBackend, QuartetConfig, Recipe
from quartet_compile.compiler import inductor


class Kind(str, enum.Enum):
    EAGER = "eager"
    INDUCTOR = "inductor"
    QUARTET = "quartet"
    TENSORRT = "tensorrt"
    FOUROVERSIX = "fouroversix"


@dataclass(frozen=True)
class Variant:
    """One column of a comparison: how the model is compiled and, for ``quartet``, which recipe
    and which boolean backend options it switches on."""

    name: str
    kind: Kind
    recipe: Recipe | None = None
    options: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        """TensorRT compiles inference graphs only: that variant times the forward alone."""
        return self.kind is not Kind.TENSORRT


BASELINE = "inductor"
VARIANTS: dict[str, Variant] = {
    "eager": Variant("eager", Kind.EAGER),
    "inductor": Variant("inductor", Kind.INDUCTOR),
    **{r.value: Variant(r.value, Kind.QUARTET, r) for r in Recipe},
    "tensorrt": Variant("tensorrt", Kind.TENSORRT),
    "fouroversix": Variant("fouroversix", Kind.FOUROVERSIX),
}
"""Names accepted by ``--variants``: ``eager``, ``inductor`` (the BF16 baseline), every recipe by
its own name (``bf16`` is the quartet backend with nothing quantized: the cost of the graph
rewrite alone), and the peers ``tensorrt`` and ``fouroversix`` (the peer package's own linear
module). A recipe's name may be followed by boolean backend options, each after a ``+``, on by
default or set with ``=true``/``=false`` (``quartet2+fuse_projections``,
``quartet2+cpp_wrapper=false``), so that one comparison holds both; ``inductor+cpp_wrapper`` is
Inductor launching from its C++ wrapper."""

FLAGS = frozenset(f.name for f in dataclasses.fields(QuartetConfig) if f.type in ("bool", bool, "bool | None"))
"""The boolean options of :class:`QuartetConfig`, which a variant name can set."""

INDUCTOR_FLAGS = frozenset({"cpp_wrapper"})
"""The options of the ``inductor`` variant (:func:`quartet_compile.compiler.inductor`'s)."""


def option_values(options: tuple[str, ...]) -> dict[str, bool]:
    """``("a", "b=false")`` -> ``{"a": True, "b": False}``."""
    values = {}
    for option in options:
        name, _, value = option.partition("=")
        if value.lower() not in ("", "true", "false"):
            raise ValueError(f"{option}: a variant option is on, or set with =true or =false")
        values[name] = value.lower() != "false"
    return values


def parse_variants(names: str | list[str]) -> list[Variant]:
    names = names.split(",") if isinstance(names, str) else names
    unknown = [n for n in names if n.partition("+")[0] not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    variants = []
    for name in names:
        base, *options = name.split("+")
        variant = VARIANTS[base]
        allowed = {Kind.QUARTET: FLAGS, Kind.INDUCTOR: INDUCTOR_FLAGS}.get(variant.kind, frozenset())
        if not set(option_values(tuple(options))) <= allowed:
            raise ValueError(
                f"{name}: the recipes take options after '+' from {sorted(FLAGS)}, "
                f"inductor from {sorted(INDUCTOR_FLAGS)}"
            )
        variants.append(dataclasses.replace(variant, name=name, options=tuple(options)))
    return variants


class _CountingBackend:
    """Counts the graphs a backend compiles: more graphs after the first step are recompiles."""

    def __init__(self, inner: Callable):
        self.inner = inner
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list, **kwargs: Any) -> Callable:
        self.graphs += 1
        return self.inner(gm, example_inputs, **kwargs)


def backend_for(variant: Variant, quartet_options: dict[str, Any]) -> _CountingBackend | None:
    """The ``torch.compile`` backend of ``variant`` (``None``: eager). ``fouroversix`` compiles
    with Inductor after :func:`train` has swapped the peer's modules in."""
    if variant.kind is Kind.EAGER:
        return None
    if variant.kind is Kind.QUARTET:
        options = {**quartet_options, **option_values(variant.options)}
        return _CountingBackend(QuartetBackend(QuartetConfig(recipe=variant.recipe, **options)))
    if variant.kind is Kind.TENSORRT:
        import torch_tensorrt  # noqa: F401  (registers the backend)

        return _CountingBackend(torch._dynamo.lookup_backend("torch_tensorrt"))
    return _CountingBackend(functools.partial(inductor, **option_values(variant.options)))


def swap_in_fouroversix(model: nn.Module) -> None:
    """The peer's own path: replace ``nn.Linear`` modules by its training linear (``lm_head`` kept)."""
    from fouroversix import ModelQuantizationConfig, quantize_model

    config = ModelQuantizationConfig(
        keep_master_weights=True, weight_scale_2d=True, modules_to_not_convert=["model.lm_head", "lm_head"]
    )
    quantize_model(model, config)
