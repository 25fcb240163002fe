"""The quantized linear layer of every recipe (SPEC 4-5): the public eager API
(:func:`quartet_compile.linear`, :class:`QuartetLinear`, :func:`swap_linears`) and the reference
layer it runs on CPU."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quartet_compile import QuartetConfig, QuartetLinear, Recipe, linear, swap_linears
from quartet_compile.reference import layer as reference
from quartet_compile.reference import (
    nvfp4_matmul,
    quantize_four_over_six,
    quantize_ms_eden,
    random_signs,
)

ALL_RECIPES = [r.value for r in Recipe]
T, K, N = 256, 128, 384


def operands(seed, dtype=torch.float32, bias=True):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, T // 2, K, generator=gen).to(dtype).requires_grad_()
    w = (torch.randn(N, K, generator=gen) / K**0.5).to(dtype).requires_grad_()
    b = torch.randn(N, generator=gen).to(dtype).requires_grad_() if bias else None
    g = torch.randn(2, T // 2, N, generator=gen).to(dtype)
    return x, w, b, g


def grads(recipe, x, w, b, g, seed=None):
    """Output and gradients of one forward+backward; ``seed`` reseeds the default generator first."""
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    if seed is not None:
        torch.manual_seed(seed)
    y = linear(x, w, b, config=QuartetConfig(recipe=recipe))
    y.backward(g)
    return y.detach(), x.grad, w.grad, None if b is None else b.grad


def test_bf16_recipe_passes_gradcheck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    w = torch.randn(8, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: linear(*a, config=QuartetConfig(recipe="bf16")), (x, w, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bf16_recipe_equals_autograd_linear(dtype):
    x, w, b, g = operands(1, dtype)
    out = grads("bf16", x, w, b, g)
    x.grad = w.grad = b.grad = None
    y = F.linear(x, w, b)
    y.backward(g)
    for got, want in zip(out, (y.detach(), x.grad, w.grad, b.grad), strict=True):
        assert torch.equal(got, want)


def test_forward_is_the_exact_product_of_the_dequantized_4_over_6_operands():
    x, w, b, _ = operands(2)
    y = linear(x, w, b)
    xq, wq = quantize_four_over_six(x.reshape(-1, K)), quantize_four_over_six(w)
    exact = xq.dequantize(torch.float64) @ wq.dequantize(torch.float64).T + b.double()
    assert torch.allclose(y.double().reshape(-1, N), exact, rtol=1e-5, atol=1e-5)
    assert ((y.double().reshape(-1, N) - exact).norm() / exact.norm()) < 1e-6


def test_quartet2_gradients_match_a_float64_computation_of_the_same_estimator():
    x, w, b, g = operands(3)
    _, dx, dw, db = grads("quartet2", x, w, b, g, seed=1234)
    # The same estimator by hand: same seed, same draw order, float64 products.
    gen = torch.Generator().manual_seed(1234)
    xq, wq = quantize_four_over_six(x.detach().reshape(-1, K)), quantize_four_over_six(w.detach())
    g2 = g.reshape(-1, N)
    signs = random_signs(128, gen, "cpu")
    gq = quantize_ms_eden(g2, signs, source=gen)
    wtq = quantize_ms_eden(wq.dequantize(torch.float32).T, signs, source=gen)
    gtq = quantize_ms_eden(g2.T, signs, source=gen)
    xtq = quantize_ms_eden(xq.dequantize(torch.float32).T, signs, source=gen)
    dx64 = gq.dequantize(torch.float64) @ wtq.dequantize(torch.float64).T
    dw64 = gtq.dequantize(torch.float64) @ xtq.dequantize(torch.float64).T
    for got, want in ((dx.reshape(-1, K), dx64), (dw, dw64), (db, g2.double().sum(0))):
        assert ((got.double() - want).norm() / want.norm()) < 1e-5
    assert torch.equal(nvfp4_matmul(gq, wtq, torch.float32), dx.reshape(-1, K))


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_identical_seeds_give_identical_gradients(recipe):
    x, w, b, g = operands(4)
    first = grads(recipe, x, w, b, g, seed=7)
    second = grads(recipe, x, w, b, g, seed=7)
    for a, c in zip(first, second, strict=True):
        assert torch.equal(a, c)


@pytest.mark.parametrize("recipe", ["quartet2", "quartet2-no46", "nvidia"])
def test_stochastic_backward_uses_fresh_randomness(recipe):
    x, w, b, g = operands(5)
    _, dx1, dw1, _ = grads(recipe, x, w, b, g, seed=0)
    _, dx2, dw2, _ = grads(recipe, x, w, b, g)
    assert not torch.equal(dx1, dx2) and not torch.equal(dw1, dw2)


def test_a_seeded_config_continues_one_stream_of_its_own():
    x, w, b, g = operands(5)
    config = QuartetConfig(seed=11)

    def dw():
        w.grad = None
        linear(x, w, b, config=config).backward(g)
        return w.grad.clone()

    torch.manual_seed(0)
    first, second = dw(), dw()
    torch.manual_seed(1)
    assert not torch.equal(first, second)
    third = QuartetConfig(seed=11)  # an equal config continues the same stream
    w.grad = None
    linear(x, w, b, config=third).backward(g)
    assert not torch.equal(w.grad, first) and not torch.equal(w.grad, second)


@pytest.mark.parametrize("recipe", ALL_RECIPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_recipes_keep_dtypes_and_approximate_the_exact_gradients(recipe, dtype):
    x, w, b, g = operands(6, dtype)
    y, dx, dw, db = grads(recipe, x, w, b, g, seed=3)
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == dtype
    xe, we, be = (t.detach().double().requires_grad_() for t in (x, w, b))
    ye = F.linear(xe, we, be)
    ye.backward(g.double())
    tolerance = 0.0 if recipe == "bf16" and dtype == torch.float32 else 0.35
    for got, want in ((y, ye), (dx, xe.grad), (dw, we.grad), (db, be.grad)):
        assert not got.isnan().any()
        assert ((got.double() - want.detach()).norm() / want.norm()) <= tolerance + 1e-6


def test_a_dtype_mismatch_is_an_error_as_for_f_linear():
    x, w, b, _ = operands(6, torch.bfloat16)
    with pytest.raises(RuntimeError, match="dtype"):
        linear(x, w.float(), b)


@pytest.mark.parametrize("recipe", ["quartet2", "nvidia", "fp4-forward"])
@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16])
def test_the_reference_layer_keeps_each_operand_dtype(recipe, x_dtype):
    """Autocast-free mixed precision inside the layer: ``dx`` in the activation's dtype, ``dW``
    in the weight's (float32 master weights)."""
    x, w, b, g = operands(6)
    numerics = QuartetConfig(recipe=recipe).numerics
    x2, g2 = x.detach().reshape(-1, K).to(x_dtype), g.reshape(-1, N).to(x_dtype)
    y, saved = reference.forward(x2, w.detach(), b.detach(), numerics)
    dx, dw = reference.backward(g2, saved, numerics, dtypes=(x_dtype, torch.float32), source=3)
    assert y.dtype == dx.dtype == x_dtype and dw.dtype == torch.float32
    exact = g2.double().T @ x2.double()
    assert ((dw.double() - exact).norm() / exact.norm()) < 0.35


def test_quartet2_saves_only_fp4_tensors_for_backward():
    x, w, b, _ = operands(7, torch.bfloat16)
    saved = []

    def pack(t):
        saved.append((t.dtype, t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        linear(x, w, b)
    assert {dtype for dtype, _ in saved} == {torch.uint8, torch.float8_e4m3fn, torch.float32}
    assert all(shape == () for dtype, shape in saved if dtype == torch.float32)
    stored = sum(torch.Size(s).numel() * (1 if d != torch.float32 else 4) for d, s in saved)
    assert stored < 0.3 * (x.numel() + w.numel()) * 2  # vs the BF16 tensors autograd would keep


@pytest.mark.parametrize(
    "recipe, shape, dim",
    [
        ("quartet2", (100, 128, 128), "T"),
        ("quartet2", (128, 128, 96), "N"),
        ("quartet2", (128, 40, 128), "K"),
        ("nvidia", (24, 128, 128), "T"),
        ("fp4-forward", (5, 24, 8), "K"),
    ],
)
def test_the_layer_rejects_shapes_its_numerics_cannot_take(recipe, shape, dim):
    t, k, n = shape
    numerics = QuartetConfig(recipe=recipe).numerics
    with pytest.raises(ValueError, match=f"needs {dim} to be a multiple"):
        reference.forward(torch.randn(t, k), torch.randn(n, k), None, numerics)
    x, w = torch.randn(t, k), torch.randn(n, k)  # the eager API pads them, which is exact
    y = linear(x, w, config=QuartetConfig(recipe=recipe))
    assert y.shape == (t, n) and torch.isfinite(y).all()


def test_bf16_recipe_takes_any_shape():
    QuartetConfig(recipe="bf16").numerics.check_shapes(3, 5, 7)


@pytest.mark.parametrize("recipe", ALL_RECIPES)
def test_empty_batch(recipe):
    x = torch.randn(0, K, requires_grad=True)
    w = torch.randn(N, K, requires_grad=True)
    y = linear(x, w, config=QuartetConfig(recipe=recipe))
    assert y.shape == (0, N)
    y.sum().backward()
    assert x.grad.shape == (0, K) and torch.equal(w.grad, torch.zeros_like(w))


def test_nan_activation_propagates_to_output_and_gradients():
    x, w, b, g = operands(8)
    with torch.no_grad():
        x[0, 0, 0] = float("nan")
    y, dx, dw, _ = grads("quartet2", x, w, b, g, seed=0)
    assert y.isnan().all() and dw.isnan().all()


def test_four_over_six_can_be_forced_off_and_rejected_where_meaningless():
    assert QuartetConfig("quartet2", four_over_six=False).numerics == QuartetConfig("quartet2-no46").numerics
    with pytest.raises(ValueError, match="four_over_six"):
        QuartetConfig("nvidia", four_over_six=True)
    with pytest.raises(ValueError):
        QuartetConfig("int3")


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, 128)
        self.body = nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 128), nn.Linear(128, 8))
        self.head = nn.Linear(128, 256)

    def forward(self, tokens):
        return self.head(self.body[:3](self.embed(tokens)))


def test_quartet_linear_module_equals_the_functional_api():
    torch.manual_seed(0)
    plain = nn.Linear(128, 256)
    module = QuartetLinear.from_linear(plain, QuartetConfig(recipe="nvidia"))
    assert module.weight is plain.weight and "recipe=nvidia" in repr(module)
    x = torch.randn(4, 64, 128)
    assert torch.equal(module(x), linear(x, plain.weight, plain.bias, config=QuartetConfig(recipe="nvidia")))
    fresh = QuartetLinear(128, 256)
    assert fresh.weight.shape == (256, 128) and fresh.config == QuartetConfig()


def test_swap_linears_follows_the_backend_rules():
    model = Small()
    swapped = swap_linears(model, QuartetConfig(keep_bf16=["body.2"]))
    assert swapped == ["body.0"]  # body.2 kept by pattern, body.3 too small, head is the output head
    assert isinstance(model.body[0], QuartetLinear) and type(model.head) is nn.Linear
    tokens = torch.randint(0, 256, (2, 64))
    model(tokens).float().square().mean().backward()
    assert model.body[0].weight.grad is not None
    assert swap_linears(model) == ["body.2"]  # a second call swaps only what is left
