"""Explicit randomness for the stochastic quantizers.

Every stochastic function takes either pre-drawn uniforms (so a kernel's random stream
can be replayed through the reference) or a generator/seed; ``None`` means PyTorch's
default generator of the tensor's device, which ``torch.manual_seed`` controls.
"""

from __future__ import annotations

import torch
from torch import Tensor

RandomSource = torch.Generator | int | None


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
