"""The ``quartet`` ops' contract with the compiler: real outputs have the shapes and strides the
fake implementations declare, for every input layout, and edge cases keep eager's semantics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quartet_compile import QuartetConfig, Recipe, backend
from quartet_compile import linear as quartet_linear

RECIPES = [r.value for r in Recipe]


def _layouts(t: int, k: int, n: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(x [t, k], weight [n, k])`` in the layouts a graph can hand the op."""
    gen = torch.Generator().manual_seed(seed)
    x, w = torch.randn(t, k, generator=gen), torch.randn(n, k, generator=gen)
    return {
        "contiguous": (x, w),
        "weight stored [K, N]": (x, w.T.contiguous().T),
        "transposed input": (x.T.contiguous().T, w),
        "sliced rows": (torch.randn(2 * t, k, generator=gen)[::2], w),
    }


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("layout", ["contiguous", "weight stored [K, N]", "transposed input", "sliced rows"])
def test_real_outputs_match_the_fake_implementation(recipe, layout):
    x, w = _layouts(256, 128, 384, seed=torch.randint(0, 2**31, ()).item())[layout]
    bias = torch.randn(384)
    numerics = QuartetConfig(recipe=recipe).numerics
    selection = (numerics.encode(), "reference", -1)
    torch.library.opcheck(torch.ops.quartet.linear.default, (x, w, bias, *selection))
    outputs = torch.ops.quartet.linear(x, w, bias, *selection)
    grad = torch.randn(256, 384).T.contiguous().T  # a column-major gradient
    saved = outputs[1:]
    args = (grad, x if numerics.saves_x else None, w if numerics.saves_weight else None, *saved, *selection)
    # (the schema check's mutation test cannot compare float8 inputs on CPU)
    torch.library.opcheck(
        torch.ops.quartet.linear_backward.default,
        (*args, torch.float32, torch.float32, True, True),
        test_utils=("test_faketensor", "test_aot_dispatch_dynamic"),
    )


class Conv1D(nn.Module):
    """GPT-2's projection: ``addmm(bias, x, W)`` with the weight stored ``[K, N]``."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, n) / k**0.5)
        self.bias = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class RawKN(nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(k, n) / k**0.5)

    def forward(self, x):
        return x @ self.weight


@pytest.mark.parametrize("module", [Conv1D, RawKN])
def test_weights_stored_k_by_n_train_through_inductor(module):
    """Inductor (the default inner backend) checks real strides against the fake ones."""
    torch.manual_seed(0)
    model = module(128, 384)
    x = torch.randn(2, 64, 128)
    compiled = torch.compile(copy.deepcopy(model), backend="quartet")
    torch.manual_seed(1)
    y = compiled(x)
    y.square().mean().backward()
    torch.manual_seed(1)
    bias = getattr(model, "bias", None)
    y_ref = quartet_linear(x, model.weight.t(), bias)
    y_ref.square().mean().backward()
    assert torch.equal(y, y_ref)
    compiled_grad = dict(compiled.named_parameters())["_orig_mod.weight"].grad
    assert torch.allclose(compiled_grad, model.weight.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("inner", ["inductor", "aot_eager", "eager"])
def test_an_empty_batch_gives_the_gradients_eager_gives(recipe, inner):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128))
    x = torch.randn(0, 128, requires_grad=True)
    compiled = torch.compile(copy.deepcopy(model), backend=backend(recipe=recipe, inner_backend=inner))
    out = compiled(x)
    assert out.shape == (0, 128)
    out.sum().backward()
    x_eager = x.detach().clone().requires_grad_()
    model(x_eager).sum().backward()
    assert x.grad.shape == (0, 128)
    for (name, p), (_, p_eager) in zip(compiled.named_parameters(), model.named_parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, p_eager.grad), name  # zeros, like eager


def test_an_empty_batch_through_the_op_directly():
    x = torch.randn(0, 128, requires_grad=True)
    w = torch.randn(256, 128, requires_grad=True)
    b = torch.randn(256, requires_grad=True)
    y = quartet_linear(x, w, b)
    F.linear(x.detach(), w.detach(), b.detach())  # the shape eager gives
    assert y.shape == (0, 256)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))
