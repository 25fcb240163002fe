"""The graph pass: what is a weight, what modules are called, which matmuls are linear layers in
disguise, which are output heads, and that every matmul-like op touching a weight is reported."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quartet_bench.models import Llama, LlamaConfig
from quartet_compile import QuartetConfig, backend, explain
from quartet_compile import linear as quartet_linear

from .helpers import rel, token_batches

transformers = pytest.importorskip("transformers")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _rows(be) -> dict[str, object]:
    return {(r.module_path, r.op): r for report in be.reports for r in report}


class TwoTower(nn.Module):
    """Two encoders whose outputs meet in a similarity: after the graph break, the towers'
    outputs enter the second graph as inputs that require grad."""

    def __init__(self):
        super().__init__()
        self.query = nn.Linear(128, 128)
        self.doc = nn.Linear(128, 128)

    def forward(self, a, b):
        qa = self.query(a)
        torch._dynamo.graph_break()
        return qa @ self.doc(b).T


def test_products_of_two_activations_stay_in_high_precision():
    torch.manual_seed(0)
    model = TwoTower()
    a, b = torch.randn(128, 128), torch.randn(256, 128)
    be = backend(inner_backend="aot_eager")
    out = torch.compile(copy.deepcopy(model), backend=be)(a, b)
    similarity = [r for r in _rows(be).values() if r.op == "matmul"]
    assert len(similarity) == 1 and not similarity[0].quantized
    assert "activations" in similarity[0].reason
    exact = (
        quartet_linear(a, model.query.weight, model.query.bias) @ quartet_linear(b, model.doc.weight, model.doc.bias).T
    )
    assert rel(out, exact) < 1e-6

    torch._dynamo.reset()
    x, y = torch.randn(256, 128, requires_grad=True), torch.randn(256, 128, requires_grad=True)
    be = backend(inner_backend="aot_eager")
    product = torch.compile(lambda p, q: p @ q.T, backend=be)(x, y)
    assert rel(product, x.detach() @ y.detach().T) < 1e-6
    assert [r.quantized for report in be.reports for r in report] == [False]


def test_marked_buffers_are_weights():
    class Frozen(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("projection", torch.randn(256, 128))

        def forward(self, x):
            return F.linear(x, self.projection)

    x = torch.randn(128, 128)
    assert not explain(Frozen(), x, verbose=False).quantized
    marked = explain(Frozen(), x, options={"weight_buffers": ["projection"]}, verbose=False)
    assert [r.weight for r in marked.quantized] == ["projection"]


class Inner(nn.Module):
    def __init__(self, breaks: bool):
        super().__init__()
        self.breaks = breaks
        self.up = nn.Linear(128, 256)
        self.down = nn.Linear(256, 128)

    def forward(self, x):
        x = F.gelu(self.up(x))
        if self.breaks:
            torch._dynamo.graph_break()
        return self.down(x)


class Body(nn.Module):
    def __init__(self, breaks: bool):
        super().__init__()
        self.embed = nn.Embedding(256, 128)
        self.layers = nn.ModuleList([Inner(breaks), Inner(False)])

    def forward(self, tokens):
        return self.layers[1](self.layers[0](self.embed(tokens)))


class Outer(nn.Module):
    """``self.lm_head(self.model(x))``: with a break inside ``model``, the head runs in a resume
    function that holds it in a stack slot."""

    def __init__(self, breaks: bool = True):
        super().__init__()
        self.model = Body(breaks)
        self.lm_head = nn.Linear(128, 256)

    def forward(self, tokens):
        return self.lm_head(self.model(tokens))


EXPECTED = {"model.layers.0.up", "model.layers.0.down", "model.layers.1.up", "model.layers.1.down", "lm_head"}


@pytest.mark.parametrize("how", ["torch.compile", "module.compile", "explain"])
@pytest.mark.parametrize("breaks", [False, True])
def test_module_paths_are_those_of_the_compiled_model_whatever_the_graph_breaks(how, breaks):
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (2, 64))
    config = QuartetConfig(keep_bf16=["model.layers.0.*"], keep_output_head=False, inner_backend="aot_eager")
    if how == "explain":
        rows = {r.module_path: r for r in explain(Outer(breaks), tokens, config=config, verbose=False).rows}
    else:
        be = backend(config)
        model = Outer(breaks)
        if how == "module.compile":
            model.compile(backend=be)
            model(tokens)
        else:
            torch.compile(model, backend=be)(tokens)
        rows = {path: r for (path, _), r in _rows(be).items()}
    assert set(rows) == EXPECTED
    assert {p for p, r in rows.items() if not r.quantized} == {"model.layers.0.up", "model.layers.0.down"}
    assert rows["lm_head"].weight == "lm_head.weight" and rows["lm_head"].quantized  # named, not matched by ""


def test_a_head_after_a_graph_break_is_still_the_head():
    be = backend(inner_backend="aot_eager")
    torch.compile(Outer(breaks=True), backend=be)(torch.randint(0, 256, (2, 64)))
    head = _rows(be)[("lm_head", "linear")]
    assert not head.quantized and head.reason.startswith("output head")


def test_gradient_checkpointing_keeps_the_paths():
    config = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        vocab_size=256, max_position_embeddings=256,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config)
    model.gradient_checkpointing_enable()
    model.train()
    be = backend(keep_bf16=["model.layers.1.*"], inner_backend="aot_eager")
    tokens = torch.randint(0, 256, (2, 64))
    torch.compile(model, backend=be)(input_ids=tokens, labels=tokens).loss.backward()
    rows = _rows(be)
    quantized = {p for (p, _), r in rows.items() if r.quantized}
    assert quantized == {f"model.layers.0.{m}" for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}  # fmt: skip
    assert not rows[("lm_head", "linear")].quantized


class Einsums(nn.Module):
    def __init__(self):
        super().__init__()
        self.w_nk = nn.Parameter(torch.randn(256, 128) / 12)
        self.w_kn = nn.Parameter(torch.randn(128, 256) / 12)

    def forward(self, x):
        a = torch.einsum("bsk,nk->bsn", x, self.w_nk)
        b = torch.einsum("kn,...k->...n", self.w_kn, x)
        c = torch.einsum("bsk,nk->bns", x, self.w_nk)  # output dims reordered: not a linear layer
        return a, b, c


def test_einsum_projections_are_linear_layers():
    torch.manual_seed(0)
    model = Einsums()
    x = torch.randn(2, 64, 128)
    report = explain(model, x, verbose=False)
    assert [r.quantized for r in report.rows] == [True, True, False]
    assert "output is not" in report.rows[2].reason
    a, b, c = torch.compile(model, backend=backend(inner_backend="aot_eager"))(x)
    assert torch.equal(a, quartet_linear(x, model.w_nk))
    assert torch.equal(b, quartet_linear(x, model.w_kn.t()))
    assert rel(c, torch.einsum("bsk,nk->bns", x, model.w_nk)) < 1e-6


class Experts(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 128, 256))

    def forward(self, x):
        return torch.bmm(x, self.w), x @ self.w


def test_every_matmul_like_op_with_a_weight_is_reported():
    torch.manual_seed(0)
    mha = nn.TransformerEncoderLayer(128, 4, 256, batch_first=True)
    x = torch.randn(2, 64, 128, requires_grad=True)
    be = backend(inner_backend="aot_eager")
    torch.compile(mha, backend=be)(x)
    rows = _rows(be)
    hidden = rows[("self_attn", "multi_head_attention_forward")]
    assert not hidden.quantized and "MultiheadAttention" in hidden.reason and hidden.weight
    assert rows[("linear1", "linear")].quantized and rows[("linear2", "linear")].quantized

    report = explain(Experts(), torch.randn(4, 64, 128), verbose=False)
    assert [(r.op, r.quantized) for r in report.rows] == [("bmm", False), ("matmul", False)]
    assert all("not a 2-D linear layer" in r.reason and r.weight == "w" for r in report.rows)


def test_transformers_moe_experts_are_reported():
    config = transformers.Qwen2MoeConfig(
        hidden_size=128, intermediate_size=256, moe_intermediate_size=128, shared_expert_intermediate_size=128,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_tok=2,
        vocab_size=256, max_position_embeddings=256,
    )  # fmt: skip
    report = explain(transformers.Qwen2MoeForCausalLM(config), torch.randint(0, 256, (2, 64)), verbose=False)
    experts = [r for r in report.rows if "experts" in r.module_path]
    assert experts and all(not r.quantized and "not a 2-D linear layer" in r.reason for r in experts)


def _masked_lm(name: str):
    small = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4, vocab_size=256)
    if name == "roberta":
        return transformers.RobertaForMaskedLM(transformers.RobertaConfig(max_position_embeddings=130, **small))
    return transformers.BertForMaskedLM(transformers.BertConfig(max_position_embeddings=128, **small))


@pytest.mark.parametrize(("name", "head"), [("roberta", "lm_head.decoder"), ("bert", "cls.predictions.decoder")])
def test_output_heads_of_any_name_are_kept_by_default(name, head):
    report = explain(_masked_lm(name), torch.randint(0, 256, (2, 64)), verbose=False)
    kept = [r for r in report.rows if not r.quantized]
    assert [r.module_path for r in kept] == [head] and kept[0].reason.startswith("output head")
    assert len(report.quantized) == 7
    everything = explain(_masked_lm(name), torch.randint(0, 256, (2, 64)), options={"keep_output_head": False},
                         verbose=False)  # fmt: skip
    assert not everything.kept


class Heads(nn.Module):
    """A tied head used as ``x @ embed.weight.T``, an untied projection to the vocabulary named
    ``readout``, and an MLP whose width happens to equal the vocabulary."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(256, 128)
        self.mlp_in = nn.Linear(128, 256)
        self.mlp_out = nn.Linear(256, 128)
        self.readout = nn.Linear(128, 256)

    def forward(self, tokens):
        x = self.embed(tokens)
        x = x + self.mlp_out(F.gelu(self.mlp_in(x)))
        return x @ self.embed.weight.T, F.log_softmax(self.readout(x).float(), -1)


def test_output_heads_are_found_by_what_they_are():
    rows = {r.module_path or r.weight: r for r in explain(Heads(), torch.randint(0, 256, (2, 64)), verbose=False).rows}
    assert rows["mlp_in"].quantized and rows["mlp_out"].quantized
    assert not rows["readout"].quantized and "vocabulary" in rows["readout"].reason
    (tied,) = [r for r in rows.values() if r.weight == "embed.weight"]
    assert not tied.quantized and "tied" in tied.reason


def test_explain_takes_keyword_inputs():
    config = transformers.T5Config(
        vocab_size=256, d_model=128, d_kv=32, d_ff=256, num_layers=1, num_decoder_layers=1, num_heads=4
    )
    model = transformers.T5ForConditionalGeneration(config)
    tokens = torch.randint(0, 256, (2, 64))
    report = explain(model, input_ids=tokens, decoder_input_ids=tokens, verbose=False)
    paths = {r.module_path for r in report.quantized}
    assert "encoder.block.0.layer.0.SelfAttention.q" in paths and "decoder.block.0.layer.1.EncDecAttention.o" in paths
    assert [r.module_path for r in report.kept if r.weight] == ["lm_head"]


def test_explain_leaves_the_compiled_model_compiled():
    torch.manual_seed(0)
    model = Llama(LlamaConfig())
    be = backend(inner_backend="aot_eager")
    compiled = torch.compile(model, backend=be)
    batches = token_batches(3)
    compiled(batches[0][:, :-1]).sum().backward()
    graphs = len(be.reports)
    breaks = dict(torch._dynamo.utils.counters["graph_break"])
    explain(model, batches[1][:, :-1], verbose=False)
    explain(compiled, batches[1][:, :-1], verbose=False)
    compiled(batches[2][:, :-1]).sum().backward()
    assert len(be.reports) == graphs  # no recompilation
    assert dict(torch._dynamo.utils.counters["graph_break"]) == breaks
