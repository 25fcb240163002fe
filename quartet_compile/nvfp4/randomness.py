"""Randomness of the stochastic quantizers and of the linear layer's backward.

Every stochastic function takes either pre-drawn uniforms (so a kernel's random stream can be
replayed through the reference) or a source: a generator, an int seed, or ``None`` for PyTorch's
default generator of the tensor's device, which ``torch.manual_seed`` controls. A backend with
``seed=`` draws from a *stream* of its own (:func:`random_stream`), one generator per device.
"""

from __future__ import annotations

import torch
from torch import Tensor

RandomSource = torch.Generator | int | None

DEFAULT_STREAM = -1
"""The stream number meaning PyTorch's default generator."""

_stream_seeds: list[int] = []
_stream_generators: dict[tuple[int, torch.device], torch.Generator] = {}


def as_generator(source: RandomSource, device: torch.device | str = "cpu") -> torch.Generator | None:
    """An int seed becomes a fresh generator on ``device``; generators and None pass through."""
    if isinstance(source, int):
        generator = torch.Generator(device=device)
        generator.manual_seed(source)
        return generator
    return source


def uniform(shape: torch.Size | tuple[int, ...], source: RandomSource, device: torch.device) -> Tensor:
    """float32 draws in [0, 1), taken on the generator's own device and moved to ``device``."""
    generator = as_generator(source, device)
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device, dtype=torch.float32).to(device)


def random_signs(n: int, source: RandomSource, device: torch.device) -> Tensor:
    """n independent float32 signs, +1 or -1 with probability 1/2 each."""
    return torch.where(uniform((n,), source, device) < 0.5, -1.0, 1.0)


def random_stream(seed: int) -> int:
    """A new stream of backward randomness seeded with ``seed``; returns its number. Each backend
    with ``seed=`` opens one, so two ``torch.compile`` calls with the same seed replay the same
    draws while the graphs of one call continue a single stream."""
    _stream_seeds.append(seed)
    return len(_stream_seeds) - 1


def stream_generator(stream: int, device: torch.device) -> torch.Generator | None:
    """The generator of ``stream`` on ``device``, created on first use and advanced by every
    draw; ``None`` (the default generator) for :data:`DEFAULT_STREAM`."""
    if stream == DEFAULT_STREAM:
        return None
    key = (stream, torch.device(device))
    if key not in _stream_generators:
        _stream_generators[key] = torch.Generator(device=device).manual_seed(_stream_seeds[stream])
    return _stream_generators[key]
