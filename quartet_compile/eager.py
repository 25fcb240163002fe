"""Quartet numerics without ``torch.compile``: a functional :func:`linear`, a
:class:`QuartetLinear` module and :func:`swap_linears` for a whole model. They call the same
ops, implementations and routing as compiled graphs (the Triton kernels on CUDA), with the host
cost of Python at every call; compiling is the faster way.
"""

from __future__ import annotations

import fnmatch

import torch
from torch import Tensor, nn

from .config import QuartetConfig
from .nvfp4.randomness import DEFAULT_STREAM, random_stream
from .ops import quantized_linear, route

_streams: dict[QuartetConfig, int] = {}


def _stream(config: QuartetConfig) -> int:
    """One random stream per seeded configuration, continued by every eager call that uses it."""
    if config.seed is None:
        return DEFAULT_STREAM
    if config not in _streams:
        _streams[config] = random_stream(config.seed)
    return _streams[config]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, *, config: QuartetConfig | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` with the numerics of ``config`` (default: ``quartet2``),
    differentiable; shapes the recipe cannot take are zero-padded, which is exact."""
    config = config or QuartetConfig()
    numerics = config.numerics
    implementation = route(numerics, x.device, config.kernel_preference).implementation
    return quantized_linear(
        x, weight, bias, numerics=numerics.encode(), implementation=implementation.value, rng=_stream(config)
    )


class QuartetLinear(nn.Linear):
    """An ``nn.Linear`` whose forward and backward use quartet numerics."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        config: QuartetConfig | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.config = config or QuartetConfig()

    @classmethod
    def from_linear(cls, module: nn.Linear, config: QuartetConfig | None = None) -> QuartetLinear:
        """A ``QuartetLinear`` that shares ``module``'s parameters (no copy)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = module.in_features, module.out_features
        new.weight, new.bias = module.weight, module.bias
        new.config = config or QuartetConfig()
        return new

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, config=self.config)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.config.recipe.value}"


def _output_heads(model: nn.Module) -> set[int]:
    """``id`` of the output heads' weights, from what they are: ``get_output_embeddings()``, a
    weight tied to an ``nn.Embedding``, or else the last ``nn.Linear`` of the model if it projects
    to an embedding's vocabulary."""
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    heads = {id(m.weight) for m in embeddings}
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if isinstance(getattr(head, "weight", None), Tensor):
        heads.add(id(head.weight))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features in {m.num_embeddings for m in embeddings}:
        heads.add(id(linears[-1].weight))
    return heads


def swap_linears(model: nn.Module, config: QuartetConfig | None = None) -> list[str]:
    """Replace, in place, each ``nn.Linear`` of ``model`` by a :class:`QuartetLinear` sharing its
    parameters, with the backend's rules: ``keep_bf16`` patterns, the output head
    (``keep_output_head``), ``min_features`` and float64 layers stay as they are. Returns the
    module paths swapped."""
    config = config or QuartetConfig()
    heads = _output_heads(model) if config.keep_output_head else set()
    swapped = []
    for parent_path, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            path = f"{parent_path}.{name}" if parent_path else name
            keep = (
                not isinstance(child, nn.Linear)
                or isinstance(child, QuartetLinear)
                or any(fnmatch.fnmatchcase(path, p) for p in config.keep_bf16)
                or id(child.weight) in heads
                or min(child.in_features, child.out_features) < config.min_features
                or child.weight.dtype == torch.float64
            )
            if not keep:
                setattr(parent, name, QuartetLinear.from_linear(child, config))
                swapped.append(path)
    return swapped
