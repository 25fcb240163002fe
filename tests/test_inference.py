"""The inference path: without a backward, each weight is quantized once per parameter version
and the output is the training forward's, bit for bit."""

import gc

import pytest
import torch
from torch import nn

from quartet_compile import QuartetConfig, backend, explain
from quartet_compile.ops import clear_weight_cache, weight_cache_info


@pytest.fixture(autouse=True)
def fresh_state():
    torch._dynamo.reset()
    clear_weight_cache()
    yield
    clear_weight_cache()


def _model(seed: int) -> nn.Module:
    """Two quantized layers, one padded (K 200, N 300), and a head kept in high precision."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(256, 200), nn.GELU(), nn.Linear(200, 300), nn.Linear(300, 8))


QUANTIZED = 2


@pytest.mark.parametrize("inner", ["inductor", "aot_eager"])
def test_no_grad_forward_is_the_training_forward_and_quantizes_each_weight_once(inner):
    seed = int(torch.randint(0, 2**31, ()))
    model = _model(seed)
    x = torch.randn(48, 256)
    compiled = torch.compile(model, backend=backend(inner_backend=inner, cache_inference_weights=True))
    with torch.no_grad():
        first = compiled(x)
        assert weight_cache_info() == (0, QUANTIZED, QUANTIZED)
        other = torch.randn(32, 256)
        second = compiled(other)
        assert weight_cache_info() == (QUANTIZED, QUANTIZED, QUANTIZED)
    trained = compiled(x)  # the training forward: both operands quantized afresh
    assert torch.equal(first, trained.detach()) and torch.equal(second, compiled(other).detach()), f"seed {seed}"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trained.square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = compiled(x)  # every weight changed version: quantized again
    assert weight_cache_info() == (QUANTIZED, 2 * QUANTIZED, QUANTIZED)
    assert not torch.equal(after, first) and torch.equal(after, compiled(x).detach()), f"seed {seed}"


def test_inference_mode_frozen_weights_and_autocast_take_the_cache():
    model = _model(1)
    x = torch.randn(32, 256)
    compiled = torch.compile(model, backend=backend(cache_inference_weights=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = compiled(x)
        with torch.inference_mode():
            cached = compiled(x)
    assert cached.dtype == torch.bfloat16 and torch.equal(cached, trained.detach())
    model.requires_grad_(False)  # grad enabled, but nothing to differentiate
    frozen = compiled(x)
    hits, misses, _ = weight_cache_info()
    assert misses == 2 * QUANTIZED  # autocast's bf16 weights and the float32 ones: two operands each
    assert hits == 0 and not frozen.requires_grad
    assert torch.equal(compiled(x), frozen) and weight_cache_info().hits == QUANTIZED


def test_a_changed_weight_is_quantized_again_and_a_freed_one_leaves_the_cache():
    model = _model(2)
    x = torch.randn(32, 256)
    compiled = torch.compile(model, backend=backend(cache_inference_weights=True))
    with torch.no_grad():
        before = compiled(x)
        model.load_state_dict(_model(3).state_dict())  # copy_ into the same tensors
        loaded = compiled(x)
    assert weight_cache_info() == (0, 2 * QUANTIZED, QUANTIZED)
    assert torch.equal(loaded, compiled(x).detach()) and not torch.equal(loaded, before)
    del model, compiled
    torch._dynamo.reset()
    gc.collect()
    assert weight_cache_info().weights == 0


def test_the_cache_is_off_by_default_and_explain_says_when_it_is_on():
    model = _model(4)
    x = torch.randn(32, 256)
    compiled = torch.compile(model, backend=backend())
    with torch.no_grad():
        compiled(x)
        compiled(x)
    assert weight_cache_info() == (0, 0, 0)
    assert "parameter version" not in str(explain(model, x, verbose=False))
    report = explain(model, x, options={"cache_inference_weights": True}, verbose=False)
    assert "once per parameter version" in str(report)
    with pytest.raises(TypeError, match="cache_inference_weights"):
        QuartetConfig(cache_inference_weights="yes")


def test_the_cached_op_keeps_its_graph_out_of_cuda_graphs():
    """A replay would skip the version check: Inductor must not capture a graph holding the op."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._inductor.utils import get_first_incompatible_cudagraph_node

    from quartet_compile import QuartetBackend

    assert torch.Tag.cudagraph_unsafe in torch.ops.quartet.linear_inference.default.tags
    model, graphs = _model(5), []
    quartet = QuartetBackend(QuartetConfig(cache_inference_weights=True))

    def capture(gm, inputs):
        graphs.append(gm)
        return gm.forward

    def rewrite_then_trace(gm, inputs):
        quartet.rewrite(gm, inputs, model)
        return aot_module_simplified(gm, inputs, fw_compiler=capture)

    with torch.no_grad():
        torch.compile(model, backend=rewrite_then_trace)(torch.randn(16, 256))
    (graph,) = graphs
    assert "linear_inference" in str(get_first_incompatible_cudagraph_node(graph).target)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("recipe", ["quartet2", "nvidia"])
def test_the_kernels_inference_path_is_their_training_forward(recipe):
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    model = nn.Sequential(nn.Linear(512, 384), nn.GELU(), nn.Linear(384, 1024)).cuda()
    x = torch.randn(4, 200, 512, device="cuda")
    compiled = torch.compile(model, backend=backend(recipe=recipe, cache_inference_weights=True))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        trained = compiled(x)
        with torch.no_grad():
            cached, again = compiled(x), compiled(x)
    assert weight_cache_info() == (2, 2, 2)
    assert torch.equal(cached, trained.detach()) and torch.equal(again, cached)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_with_cuda_graphs_an_updated_weight_is_never_read_stale():
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    model = nn.Sequential(nn.Linear(512, 384), nn.GELU(), nn.Linear(384, 256)).cuda()
    x = torch.randn(256, 512, device="cuda")
    compiled = torch.compile(model, backend=backend(cache_inference_weights=True), mode="reduce-overhead")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        with torch.no_grad():
            evaluated = compiled(x).clone()
        trained = compiled(x)
        assert torch.equal(evaluated, trained.detach())
        trained.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
