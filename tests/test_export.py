"""NVFP4 checkpoint export, checked by the formats' own readers: the ``compressed-tensors``
package decompresses it, its ModelOpt converter reads the ModelOpt variant, and ``transformers``
loads it in a process that never imports quartet_compile."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from quartet_compile import QuartetConfig, export
from quartet_compile.export.formats import Format, decode
from quartet_compile.reference.layer import quantize_weight

from .helpers import rel

transformers = pytest.importorskip("transformers")
ct = pytest.importorskip("compressed_tensors")

LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _llama(seed: int, kv_heads: int = 4):
    """A small Llama with fresh random weights; layer 0's k_proj and up_proj are scaled up, so
    that their fused groups need a tensor scale other than their siblings'."""
    cfg = transformers.LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, vocab_size=256, max_position_embeddings=256,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(torch.empty(()).uniform_(0.5, 2.0))  # every weight its own magnitude
        model.model.layers[0].self_attn.k_proj.weight.mul_(3.0)
        model.model.layers[0].mlp.up_proj.weight.mul_(3.0)
    return model, torch.randint(0, 256, (2, 64))


def _module_tensors(state: dict[str, torch.Tensor], module: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(module + "."): v for k, v in state.items() if k.rpartition(".")[0] == module}


def _trained(model, module: str, config: QuartetConfig):
    """The FP4 weight the quantized forward multiplies by (bf16 autocast casts the weight)."""
    return quantize_weight(model.get_submodule(module).weight.detach().bfloat16(), config.numerics)


@pytest.mark.parametrize("recipe", ["quartet2", "nvidia"])
def test_compressed_tensors_decompresses_what_training_used(recipe, tmp_path):
    model, tokens = _llama(seed=int(torch.randint(0, 2**31, ())))
    config = QuartetConfig(recipe=recipe)
    report = export(model, tmp_path, tokens, config=config)
    state = load_file(tmp_path / "model.safetensors")
    saved = json.loads((tmp_path / "config.json").read_text())
    quant_config = ct.quantization.QuantizationConfig.model_validate(saved["quantization_config"])
    scheme = quant_config.config_groups["group_0"]
    assert quant_config.format == "nvfp4-pack-quantized" and quant_config.ignore == ["lm_head"]
    layers = {layer.module: layer for layer in report.layers}
    assert set(layers) == {f"model.layers.{i}.{p}" for i in range(2) for p in LAYERS + MLP}
    for module, layer in layers.items():
        tensors = _module_tensors(state, module)
        assert set(tensors) == {"weight_packed", "weight_scale", "weight_global_scale"}
        theirs = ct.compressors.NVFP4PackedCompressor.decompress(tensors, scheme)["weight"]
        assert torch.isfinite(theirs).all()
        assert torch.equal(theirs, decode(Format.COMPRESSED_TENSORS, tensors).bfloat16()), module
        trained = _trained(model, module, config)
        if not layer.group:  # the trained weight, up to the format's rounding of 1 / tensor scale
            assert 0 < layer.decode_error <= 2**-22 or layer.decode_error == 0
            exact = trained.dequantize(torch.float32)
            got = decode(Format.COMPRESSED_TENSORS, tensors)
            assert ((got - exact).abs() <= 2**-22 * exact.abs().max()).all(), module
    assert "weight_packed" not in str(_module_tensors(state, "lm_head"))


def _exported_groups(tmp_path, config: QuartetConfig):
    """The seed-1 Llama exported with ``config``: the model, the written tensors, the report, its
    layers by module, and the module paths of each fused group."""
    model, tokens = _llama(seed=1)
    report = export(model, tmp_path, tokens, config=config)
    layers = {layer.module: layer for layer in report.layers}
    groups = [[f"model.layers.{i}.{p}" for p in group] for i in range(2) for group in (LAYERS[:3], MLP[:2])]
    return model, load_file(tmp_path / "model.safetensors"), report, layers, groups


def test_fused_groups_share_one_tensor_scale_and_report_the_change(tmp_path):
    config = QuartetConfig()
    model, state, _, layers, groups = _exported_groups(tmp_path, config)
    for members in groups:
        scales = {float(state[f"{m}.weight_global_scale"]) for m in members}
        assert len(scales) == 1, members  # what engines fuse carries one scale
        whole = quantize_weight(
            torch.cat([model.get_submodule(m).weight.detach().bfloat16() for m in members]), config.numerics
        )
        assert float(1 / whole.tensor_scale) == scales.pop()
        for m in members:
            exported = decode(Format.COMPRESSED_TENSORS, _module_tensors(state, m))
            expected = rel(exported, _trained(model, m, config).dequantize(torch.float32))
            assert layers[m].group == tuple(members)
            assert layers[m].relative_change == pytest.approx(expected, rel=1e-3, abs=1e-6)
    scaled_up = ("model.layers.0.self_attn.k_proj", "model.layers.0.mlp.up_proj")
    assert all(layers[m].relative_change == 0 for m in scaled_up)  # the group's scale is theirs
    assert all(layers[f"model.layers.0.{p}"].relative_change > 0.01 for p in ("self_attn.q_proj", "mlp.gate_proj"))
    assert layers["model.layers.0.self_attn.o_proj"].group == ()


def test_a_model_trained_with_fused_projections_exports_exactly(tmp_path):
    """With ``fuse_projections`` the forward multiplies by each group's weights quantized as one
    tensor: the export writes exactly those, and reports no change."""
    config = QuartetConfig(fuse_projections=True)
    model, state, report, layers, groups = _exported_groups(tmp_path, config)
    for members in groups:
        weights = [model.get_submodule(m).weight.detach().bfloat16() for m in members]
        trained = quantize_weight(torch.cat(weights), config.numerics).dequantize(torch.float32)
        for m, exact in zip(members, trained.split([w.shape[0] for w in weights]), strict=True):
            assert layers[m].group == tuple(members) and layers[m].relative_change == 0, m
            got = decode(Format.COMPRESSED_TENSORS, _module_tensors(state, m))
            assert ((got - exact).abs() <= 2**-22 * exact.abs().max()).all(), m
    assert "0.00e+00 change" in str(report)


def test_a_group_quantized_in_part_stays_in_high_precision(tmp_path):
    model, tokens = _llama(seed=2, kv_heads=2)  # k/v: N = 64, below the backend's min_features
    report = export(model, tmp_path, tokens)
    state = load_file(tmp_path / "model.safetensors")
    for i in range(2):
        q = f"model.layers.{i}.self_attn.q_proj"
        assert "fused with" in report.excluded[q] and "min_features" in report.excluded[q.replace("q_", "k_")]
        assert state[f"{q}.weight"].dtype == torch.bfloat16
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "model.layers.0.self_attn.q_proj" in saved["quantization_config"]["ignore"]
    assert {m.module.rpartition(".")[2] for m in report.layers} == {"o_proj", "gate_proj", "up_proj", "down_proj"}


def test_modelopt_checkpoint_decodes_exactly_and_converts_to_compressed_tensors(tmp_path):
    model, tokens = _llama(seed=int(torch.randint(0, 2**31, ())))
    calibration = {"activations": "calibrated", "calibration": [tokens, tokens.flip(0)], "fuse": False}
    report = export(model, tmp_path / "modelopt", tokens, format="modelopt", **calibration)
    export(model, tmp_path / "ct", tokens, **calibration)
    quant = json.loads((tmp_path / "modelopt" / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == "NVFP4" and quant["group_size"] == 16 and quant["exclude_modules"] == ["lm_head"]
    modelopt = load_file(tmp_path / "modelopt" / "model.safetensors")
    for layer in report.layers:
        assert layer.decode_error == 0 and layer.group == ()
        trained = _trained(model, layer.module, QuartetConfig()).dequantize(torch.float32)
        assert torch.equal(decode(Format.MODELOPT, _module_tensors(modelopt, layer.module)), trained)
    # layer 0's q_proj reads the normalized embeddings: its static input scale, computed directly
    with torch.no_grad():
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(tokens))
    expected = h.bfloat16().abs().amax().float() / (6 * 448)
    assert torch.equal(modelopt["model.layers.0.self_attn.q_proj.input_scale"], expected)
    names = [
        f"{m.module}.{k}" for m in report.layers for k in ("weight", "weight_scale", "weight_scale_2", "input_scale")
    ]
    from compressed_tensors.entrypoints.convert.converters.modelopt_nvfp4 import ModelOptNvfp4Converter

    converted = ModelOptNvfp4Converter(targets=["re:.*proj$"]).process({n: modelopt[n] for n in names})
    theirs = load_file(tmp_path / "ct" / "model.safetensors")
    for name, tensor in converted.items():
        assert torch.equal(tensor.float().reshape(-1), theirs[name].float().reshape(-1)), name


def test_transformers_loads_the_checkpoint_without_quartet(tmp_path):
    model, tokens = _llama(seed=3)
    export(model, tmp_path, tokens)
    state = load_file(tmp_path / "model.safetensors")
    served = model.to(torch.bfloat16)
    with torch.no_grad():  # the model with the checkpoint's weights, decoded by compressed-tensors' rule
        for name, module in served.named_modules():
            if f"{name}.weight_packed" in state:
                module.weight.copy_(decode(Format.COMPRESSED_TENSORS, _module_tensors(state, name)))
        expected = served(tokens).logits.float()
    torch.save(tokens, tmp_path / "tokens.pt")
    script = (
        "import sys, torch, transformers\n"
        "m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)\n"
        "with torch.no_grad():\n"
        "    logits = m(torch.load(sys.argv[1] + '/tokens.pt')).logits.float()\n"
        "torch.save(logits, sys.argv[1] + '/logits.pt')\n"
        "assert 'quartet_compile' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, timeout=300)
    logits = torch.load(tmp_path / "logits.pt")
    assert torch.isfinite(logits).all()
    assert rel(logits, expected) < 1e-2  # same weights up to one bf16 rounding, same bf16 forward


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"format": "gguf"}, "not an export format"),
        ({"activations": "static"}, "choose 'none'"),
        ({"activations": "calibrated"}, "needs calibration batches"),
        ({"format": "modelopt"}, "quantize activations too"),
        ({"activations": "calibrated", "calibration": []}, "at least one batch"),
        ({"options": {"recipe": "bf16"}}, "nothing to export"),
    ],
)
def test_bad_export_requests_fail_early(kwargs, message, tmp_path):
    model, tokens = _llama(seed=0)
    with pytest.raises(ValueError, match=message):
        export(model, tmp_path, tokens, **kwargs)
    assert not any(tmp_path.iterdir())


def test_the_command_exports_a_model_directory_with_its_tokenizer_files(tmp_path):
    model, _ = _llama(seed=4)
    model.save_pretrained(tmp_path / "trained")
    (tmp_path / "trained" / "tokenizer_config.json").write_text("{}")
    torch.save(torch.randint(0, 256, (2, 32)), tmp_path / "calibration.pt")
    command = [sys.executable, "-m", "quartet_compile.export", str(tmp_path / "trained"), str(tmp_path / "out")]
    command += ["--format", "modelopt", "--calibration", str(tmp_path / "calibration.pt")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "14 NVFP4 layers" in result.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "config.json", "hf_quant_config.json", "model.safetensors", "tokenizer_config.json", "generation_config.json",
    }  # fmt: skip
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["quantization_config"]["quant_algo"] == "NVFP4"
    state = load_file(tmp_path / "out" / "model.safetensors")
    assert state["model.layers.1.mlp.down_proj.input_scale"] > 0


def test_transformers_reads_the_static_input_scales_of_a_w4a4_checkpoint(tmp_path):
    """The served W4A4 forward quantizes inputs by RTN under the static scale, where training used
    4/6 under a per-step tensor scale, so its logits are not compared with training's: the test
    checks that the reader takes the checkpoint's scales and runs."""
    model, tokens = _llama(seed=5)
    export(model, tmp_path, tokens, activations="calibrated", calibration=[tokens])
    saved = json.loads((tmp_path / "config.json").read_text())
    scheme = saved["quantization_config"]["config_groups"]["group_0"]
    assert scheme["input_activations"]["strategy"] == "tensor_group"
    ct.quantization.QuantizationConfig.model_validate(saved["quantization_config"])
    torch.save(tokens, tmp_path / "tokens.pt")
    script = (
        "import sys, torch, transformers\n"
        "m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.bfloat16)\n"
        "with torch.no_grad():\n"
        "    logits = m(torch.load(sys.argv[1] + '/tokens.pt')).logits\n"
        "scale = m.model.layers[1].mlp.down_proj.input_global_scale\n"
        "torch.save((bool(torch.isfinite(logits).all()), scale.detach().float()), sys.argv[1] + '/read.pt')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, timeout=300)
    finite, scale = torch.load(tmp_path / "read.pt")
    state = load_file(tmp_path / "model.safetensors")
    assert finite and torch.equal(scale, state["model.layers.1.mlp.down_proj.input_global_scale"])
