"""``fuse_projections``: q/k/v and gate/up run as one quantized GEMM on their concatenated weights,
through Inductor, with exactly the numbers of that one GEMM; groups that cannot fuse stay apart."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quartet_compile import QuartetConfig, backend
from quartet_compile.ops import quantized_linear, routing

from .helpers import rel, token_batches, train
from .test_backend import tiny_llama


class Attention(nn.Module):
    """q/k/v of one input (with biases, of different widths), then o."""

    def __init__(self, dim: int = 256, kv: int = 128, k_input: bool = False):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, kv)
        self.v_proj = nn.Linear(dim, kv)
        self.o_proj = nn.Linear(dim + 2 * kv, dim)
        self.k_input = k_input

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        k = self.k_proj(other if self.k_input else x)
        return self.o_proj(torch.cat([self.q_proj(x), k, self.v_proj(x)], -1))


def _counting(config: QuartetConfig) -> tuple[object, list[int]]:
    """A backend that counts the ``quantized_linear`` calls of the graphs it rewrites."""
    inner, counts = backend(config), []

    def compile_graph(gm, example_inputs):
        compiled = inner(gm, example_inputs)
        counts.append(sum(node.target is quantized_linear for node in gm.graph.nodes))
        return compiled

    compile_graph.inner = inner
    return compile_graph, counts


def _fused_reference(model: Attention, x: torch.Tensor, numerics: str, implementation: str) -> torch.Tensor:
    """The same model with its q/k/v as one ``quantized_linear`` call, written out by hand."""
    weight = torch.cat([model.q_proj.weight, model.k_proj.weight, model.v_proj.weight])
    bias = torch.cat([model.q_proj.bias, model.k_proj.bias, model.v_proj.bias])
    options = {"numerics": numerics, "implementation": implementation}
    q, k, v = quantized_linear(x, weight, bias, **options).split([256, 128, 128], -1)
    return quantized_linear(torch.cat([q, k, v], -1), model.o_proj.weight, model.o_proj.bias, **options)


@pytest.mark.parametrize("recipe", ["quartet2", "fp4-forward"])
def test_a_fused_group_computes_its_one_gemm_through_inductor(recipe):
    """Forward bit for bit; gradients too where the backward is deterministic (``fp4-forward``;
    bias gradients within reassociation), else within MS-EDEN's randomness."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = Attention(), torch.randn(2, 64, 256, requires_grad=True)
    config = QuartetConfig(recipe=recipe, fuse_projections=True)
    compile_backend, counts = _counting(config)
    out = torch.compile(model, backend=compile_backend)(x, x)
    assert counts == [2]  # q/k/v in one call, o in another
    implementation = routing.route(config.numerics, x.device).implementation.value
    expected = _fused_reference(model, x, config.numerics.encode(), implementation)
    assert torch.isfinite(out).all() and torch.equal(out, expected)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [x, *model.parameters()], g)
    expected_grads = torch.autograd.grad(expected, [x, *model.parameters()], g)
    names = ["x", *(name for name, _ in model.named_parameters())]
    for name, got, want in zip(names, grads, expected_grads, strict=True):
        assert torch.isfinite(got).all()
        if recipe != "fp4-forward":
            assert rel(got, want) < 0.5, name
        elif name.endswith("bias"):  # Inductor sums the gradient's rows in its own order
            assert rel(got, want) < 1e-6, name
        else:
            assert torch.equal(got, want), name


def test_the_report_names_each_group_and_a_model_trains_with_it():
    torch._dynamo.reset()
    compile_backend, counts = _counting(QuartetConfig(fuse_projections=True))
    losses, grads = train(torch.compile(tiny_llama(), backend=compile_backend), token_batches(2))
    assert torch.isfinite(losses).all() and all(torch.isfinite(g).all() for g in grads.values())
    rows = {row.module_path: row for row in compile_backend.inner.reports[0]}
    assert rows["layers.0.attn.k_proj"].fused_with == ("layers.0.attn.q_proj", "layers.0.attn.v_proj")
    assert "one GEMM with q_proj, v_proj (fuse_projections)" in rows["layers.0.attn.k_proj"].reason
    assert rows["layers.0.mlp.up_proj"].fused_with == ("layers.0.mlp.gate_proj",)
    assert rows["layers.0.attn.o_proj"].fused_with == () and rows["layers.0.mlp.down_proj"].fused_with == ()
    layers = len(tiny_llama().layers)
    assert counts[0] == 4 * layers  # qkv, o, gate/up, down per layer (the head stays in BF16)
    assert grads["layers.0.attn.k_proj.weight"].shape == tiny_llama().layers[0].attn.k_proj.weight.shape


def test_a_group_whose_input_is_a_quantized_layers_output_fuses():
    """The group's input is rewritten first: the fused call must read the rewritten node."""
    torch._dynamo.reset()
    model, pre = Attention(), nn.Linear(256, 256)
    compile_backend, counts = _counting(QuartetConfig(fuse_projections=True))
    x = torch.randn(2, 64, 256)
    out = torch.compile(lambda t: model(pre(t), t), backend=compile_backend)(x)
    assert counts == [3] and torch.isfinite(out).all()
    rows = compile_backend.inner.reports[0]
    assert [len(row.fused_with) for row in rows] == [0, 2, 2, 2, 0]


@pytest.mark.parametrize(
    ("config", "model", "why"),
    [
        (QuartetConfig(fuse_projections=False), Attention(), "option off"),
        (QuartetConfig(fuse_projections=True), Attention(k_input=True), "k reads another input"),
        (QuartetConfig(fuse_projections=True, keep_bf16="*k_proj"), Attention(), "k stays in BF16"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_projections_that_cannot_run_as_one_gemm_stay_apart(config, model, why):
    torch._dynamo.reset()
    compile_backend, counts = _counting(config)
    x = torch.randn(2, 64, 256)
    torch.compile(model, backend=compile_backend)(x, torch.randn(2, 64, 256))
    quantized = [row for row in compile_backend.inner.reports[0] if row.quantized]
    assert all(row.fused_with == () for row in quantized), why
    assert counts == [len(quantized)]


def test_the_option_takes_a_bool():
    with pytest.raises(TypeError, match="fuse_projections"):
        QuartetConfig(fuse_projections="yes")


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["quartet2", "nvidia"])
def test_a_fused_group_on_the_kernels_computes_its_one_gemm(recipe):
    """The kernels' route through Inductor, against the same one GEMM called eagerly: the forward
    bit for bit, the gradients within the backward's randomness."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Attention().cuda()
    x = torch.randn(2, 512, 256, device="cuda", requires_grad=True)
    config = QuartetConfig(recipe=recipe, fuse_projections=True)
    compile_backend, counts = _counting(config)
    compiled = torch.compile(model, backend=compile_backend)
    with torch.autocast("cuda", torch.bfloat16):
        compiled(x, x)  # compiles
        implementation = routing.route(config.numerics, x.device).implementation.value
        results = []
        for fn in (
            lambda: compiled(x, x),
            lambda: _fused_reference(model, x, config.numerics.encode(), implementation),
        ):
            out = fn()
            results.append([out, *torch.autograd.grad(out.float().square().sum(), [x, *model.parameters()])])
    assert counts == [2]
    (out, *grads), (expected, *expected_grads) = results
    assert torch.isfinite(out).all() and torch.equal(out, expected)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.isfinite(got).all() and rel(got, want) < 0.5
