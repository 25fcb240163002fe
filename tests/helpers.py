"""Shared pieces of the backend tests: eager reference models and short training loops."""

from __future__ import annotations

import copy
import fnmatch

import torch
from torch import nn

from quartet_compile.config import QuartetConfig
from quartet_compile.ops import op_arguments, quartet_linear_op


class ReferenceLinear(nn.Module):
    """An ``nn.Linear`` that runs the quartet op eagerly (the reference implementation)."""

    def __init__(self, linear: nn.Linear, config: QuartetConfig):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.kwargs = op_arguments(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quartet_linear_op(x, self.weight, self.bias, **self.kwargs)


def eager_reference(model: nn.Module, config: QuartetConfig, head: str = "lm_head") -> nn.Module:
    """A copy of ``model`` whose linear layers are ReferenceLinear, except those in ``keep_bf16``
    and the output head ``head`` (which the backend keeps by default)."""
    model = copy.deepcopy(model)
    keep = (*config.keep_bf16, head) if config.keep_output_head else config.keep_bf16
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and not any(fnmatch.fnmatchcase(path, p) for p in keep):
                setattr(module, child_name, ReferenceLinear(child, config))
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
