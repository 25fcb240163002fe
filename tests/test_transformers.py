"""Hugging Face models built from small configs (random weights, no downloads) compile with
the quartet backend, train, and have every projection reported."""

import pytest
import torch

from quartet_compile import backend, explain

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=256, max_position_embeddings=256)


def _llama_like(config_cls, model_cls):
    cfg = config_cls(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        **SMALL,
    )
    projections = (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
    return model_cls(cfg), [f"model.layers.{i}.{p}" for i in range(2) for p in projections]


def llama():
    return _llama_like(transformers.LlamaConfig, transformers.LlamaForCausalLM)


def qwen2():
    return _llama_like(transformers.Qwen2Config, transformers.Qwen2ForCausalLM)


def gpt2():
    cfg = transformers.GPT2Config(n_embd=128, n_layer=2, n_head=4, vocab_size=256, n_positions=256)
    projections = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # Conv1D: addmm, weight [K, N]
    return transformers.GPT2LMHeadModel(cfg), [f"transformer.h.{i}.{p}" for i in range(2) for p in projections]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("build", [llama, qwen2, gpt2], ids=["llama", "qwen2", "gpt2"])
def test_hf_model_compiles_trains_and_reports_every_projection(build):
    torch.manual_seed(0)
    model, projections = build()
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))

    report = explain(model, tokens, verbose=False)
    assert sorted(r.module_path for r in report.quantized) == sorted(projections)
    # Kept matmuls with a weight: only the head (rotary tables may add activation matmuls).
    assert [r.module_path for r in report.kept if r.weight] == ["lm_head"]

    compiled = torch.compile(model, backend=backend(inner_backend="aot_eager"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = compiled(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5


def test_the_trainer_trains_a_model_compiled_in_place(tmp_path, monkeypatch):
    """The supported way with ``transformers.Trainer`` (whose ``torch_compile_backend`` accepts
    only accelerate's own backend names): ``model.compile(backend="quartet")``, then the Trainer."""
    pytest.importorskip("accelerate")
    from torch.utils.data import Dataset

    from quartet_compile.reference import layer

    calls = []
    forward = layer.forward
    monkeypatch.setattr(layer, "forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))

    class Windows(Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            tokens = torch.randint(0, 256, (64,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": tokens, "labels": tokens}

    torch.manual_seed(0)
    model, projections = llama()
    model.compile(backend="quartet", options={"inner_backend": "aot_eager"})
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=4, learning_rate=3e-3,
        report_to=[], use_cpu=True, logging_steps=1, save_strategy="no",
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Windows())
    losses = [log["loss"] for log in trainer.train() and trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert len(calls) == 4 * len(projections)  # every projection quantized on every step
