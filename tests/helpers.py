"""Shared pieces of the backend tests: eager reference models and short training loops."""

from __future__ import annotations

import copy

import torch
from torch import nn

from quartet_compile import QuartetConfig, swap_linears


def eager_reference(model: nn.Module, config: QuartetConfig) -> nn.Module:
    """A copy of ``model`` with the same linear layers quantized as the backend quantizes them,
    run eagerly (:func:`quartet_compile.swap_linears`)."""
    model = copy.deepcopy(model)
    swap_linears(model, config)
    return model


def train(model: nn.Module, batches: list[torch.Tensor], lr: float = 0.05, seed: int = 0):
    """SGD on next-token loss; returns the losses and the last step's gradients by name."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for tokens in batches:
        opt.zero_grad()
        logits = model(tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        losses.append(loss.detach())
        grads = {
            n.removeprefix("_orig_mod."): p.grad.detach().clone()
            for n, p in model.named_parameters()
            if p.grad is not None
        }
        opt.step()
    return torch.stack(losses), grads


def token_batches(steps: int, batch: int = 2, seq: int = 64, vocab: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """``seq + 1`` tokens per row so that inputs have ``batch * seq`` tokens (a multiple of 128)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq + 1), generator=gen) for _ in range(steps)]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))
