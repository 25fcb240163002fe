"""``export(model, out_dir, *example_inputs)``: a ``transformers``-style NVFP4 checkpoint of the
weights the quantized forward multiplies by.

Which weights are quantized is the backend's own decision (:func:`~quartet_compile.explain` on
the example inputs): the FP4 weight of a quantized layer is the forward's weight quantizer
applied to the weight in the dtype the forward casts it to (``dtype``, bf16 under autocast), so
the export holds what training used. Layers kept in high precision are written unquantized and
listed as excluded.

Engines fuse the projections that share an input (q/k/v, gate/up) into one GEMM with one tensor
scale per fused weight, while training quantizes each weight with its own unless it ran with
``fuse_projections``. Each such group is written with the scale of the group's largest magnitude,
and the report gives how far that moves each weight from the one training used (nothing, for a
group trained as one GEMM); a group the backend quantizes only in part is written in high
precision.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import QuartetConfig
from ..explain import explain
from ..nvfp4.format import NVFP4Tensor
from ..passes.projection_groups import fused_groups
from ..reference.layer import quantize_weight
from ..version import __version__
from .calibration import activation_scale, input_amax
from .formats import Format, decode, extra_files, layer_tensors, quantization_config

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class ExportedLayer:
    """One quantized linear layer of the checkpoint."""

    module: str
    shape: tuple[int, int]
    group: tuple[str, ...] = ()
    """The fused group whose shared tensor scale the layer was re-quantized with, if any."""
    relative_change: float = 0.0
    """``|W_export - W_trained| / |W_trained|`` of the dequantized weights (0 outside groups)."""
    decode_error: float = 0.0
    """Largest difference between the format's decoding rule and ours (float32), relative to
    the weight's largest magnitude: 0 where the format gives back exactly the trained weight."""


@dataclass
class ExportReport:
    out_dir: Path
    format: Format
    layers: list[ExportedLayer] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)
    """Linear layers written in high precision, with the reason."""

    def __str__(self) -> str:
        lines = [f"{self.format.value} checkpoint in {self.out_dir}: {len(self.layers)} NVFP4 layers"]
        for layer in self.layers:
            notes = []
            if layer.group:
                notes.append(f"shared scale of {'/'.join(layer.group)}: {layer.relative_change:.2e} change")
            if layer.decode_error:
                notes.append(f"decodes within {layer.decode_error:.1e}")
            lines.append(f"  {layer.module} {list(layer.shape)}" + (f" ({'; '.join(notes)})" if notes else ""))
        lines += [f"  kept in high precision: {name} ({reason})" for name, reason in self.excluded.items()]
        return "\n".join(lines)


def _quantized_modules(model: nn.Module, report_rows: Sequence[Any]) -> tuple[list[str], dict[str, str]]:
    """Module paths of the ``nn.Linear`` layers whose weight the backend quantizes, and the other
    linear layers with the reason they stay in high precision."""
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    kept = {row.module_path: row.reason for row in report_rows if not row.quantized}
    quantized = {row.module_path for row in report_rows if row.quantized and row.weight == f"{row.module_path}.weight"}
    chosen = [name for name in linears if name in quantized and name not in kept]  # tied or reused: kept
    return chosen, {name: kept.get(name, "not a quantized linear layer") for name in linears if name not in chosen}


def _layers(
    model: nn.Module, rows: Sequence[Any], fuse: bool
) -> tuple[list[str], dict[str, str], list[tuple[str, ...]]]:
    """The layers to quantize, the linear layers kept in high precision with the reason, and
    (with ``fuse``) the fused groups, each quantized whole or kept whole, as engines load them."""
    quantized, excluded = _quantized_modules(model, rows)
    groups = fused_groups(quantized + list(excluded)) if fuse else []
    for members in groups:
        kept = [m for m in members if m in excluded]
        if kept and len(kept) < len(members):
            for m in members:
                excluded.setdefault(m, f"fused with {', '.join(kept)}, which stays in high precision")
    quantized = [name for name in quantized if name not in excluded]
    return quantized, excluded, [g for g in groups if set(g) <= set(quantized)]


def _trained_groups(rows: Sequence[Any]) -> set[frozenset[str]]:
    """The groups trained as one GEMM (``fuse_projections``): their weights already share one
    tensor scale."""
    return {frozenset((row.module_path, *row.fused_with)) for row in rows if row.quantized and row.fused_with}


def _fp4_weights(
    model: nn.Module,
    modules: list[str],
    groups: list[tuple[str, ...]],
    config: QuartetConfig,
    dtype: torch.dtype,
    trained_groups: set[frozenset[str]],
) -> tuple[dict[str, NVFP4Tensor], dict[str, tuple[tuple[str, ...], float]]]:
    """Each layer's FP4 weight as the forward quantizes it, a fused group's with the group's one
    tensor scale, and for those the group and the relative change from the weight the training
    forward used (the group's own where it trained as one GEMM)."""
    weights = {name: model.get_submodule(name).weight.detach().to(dtype) for name in modules}
    fp4 = {name: quantize_weight(w, config.numerics) for name, w in weights.items()}
    shared = {}
    for members in groups:
        quantized = _quantize_group([weights[m] for m in members], config)
        for name, q in zip(members, quantized, strict=True):
            trained = q if frozenset(members) in trained_groups else fp4[name]
            shared[name] = (members, _relative(q.dequantize(torch.float32), trained.dequantize(torch.float32)))
            fp4[name] = q
    return fp4, shared


def _quantize_group(weights: list[Tensor], config: QuartetConfig) -> list[NVFP4Tensor]:
    """The weights quantized as one tensor (concatenated rows: blocks run along ``K`` and tiles
    never cross a weight's rows, so only the tensor scale is shared), then split back."""
    whole = quantize_weight(torch.cat(weights), config.numerics)
    parts, start = [], 0
    for w in weights:
        rows = w.shape[0]
        parts.append(
            NVFP4Tensor(
                whole.codes[start : start + rows],
                whole.scales[start : start + rows],
                whole.tensor_scale,
                w.shape,
                w.dtype,
            )
        )
        start += rows
    return parts


def _relative(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


def _hf_config(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return config.to_dict() if hasattr(config, "to_dict") else {}


def _unique_storage(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Tied parameters (one storage under two names) are written once, under the first name,
    as ``transformers`` writes them."""
    seen: set[tuple[int, int]] = set()
    unique = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor
    return unique


def export(
    model: nn.Module,
    out_dir: str | Path,
    *example_args: Any,
    format: str = "compressed-tensors",
    activations: str = "none",
    calibration: Iterable[Any] | None = None,
    config: QuartetConfig | None = None,
    options: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.bfloat16,
    fuse: bool = True,
    **example_kwargs: Any,
) -> ExportReport:
    """Write ``model``'s NVFP4 checkpoint to ``out_dir`` and return what was written.

    ``example_args`` / ``example_kwargs``: one input of the model (a batch of token ids), through
    which :func:`~quartet_compile.explain` finds the layers the backend quantizes with
    ``config`` / ``options`` (the training run's). ``format``: ``"compressed-tensors"`` or
    ``"modelopt"``. ``activations``: ``"none"`` (weight-only NVFP4, compressed-tensors only;
    activations stay in ``dtype``) or ``"calibrated"`` (W4A4: each layer's static input scale
    from the largest input magnitude over the ``calibration`` batches, each a tensor, a tuple of
    arguments or a dict of keyword arguments of ``model``). ``dtype``: what the forward casts
    weights and inputs to (bf16 under bf16 autocast), and the dtype of the unquantized tensors.
    ``fuse``: treat q/k/v and gate/up as the fused layers engines load: one tensor scale per
    group, and a group with a member the backend keeps in high precision is kept whole.
    """
    fmt = Format(format)
    if activations not in ("none", "calibrated"):
        raise ValueError(f"activations={activations!r}: choose 'none' (weight-only) or 'calibrated' (W4A4)")
    if activations == "calibrated" and calibration is None:
        raise ValueError("activations='calibrated' needs calibration batches (calibration=[batch, ...])")
    if activations == "none" and fmt is Format.MODELOPT:
        raise ValueError("ModelOpt's NVFP4 checkpoints quantize activations too: pass activations='calibrated'")
    if config is not None and options:
        raise ValueError("pass either a QuartetConfig or options, not both")
    config = config or QuartetConfig.from_options(options)
    if not config.numerics.quantized:
        raise ValueError(f"recipe {config.recipe.value!r} trains without FP4 weights: there is nothing to export")
    root = getattr(model, "_orig_mod", model)
    rows = explain(root, *example_args, config=config, verbose=False, **example_kwargs).rows
    quantized, excluded, groups = _layers(root, rows, fuse)
    fp4, shared = _fp4_weights(root, quantized, groups, config, dtype, _trained_groups(rows))
    amax = input_amax(root, quantized, calibration, dtype) if activations == "calibrated" else {}

    state = {name: t.detach() for name, t in root.state_dict().items()}
    state = {n: (t.to(dtype) if t.is_floating_point() else t) for n, t in _unique_storage(state).items()}
    report = ExportReport(Path(out_dir), fmt, excluded=dict(sorted(excluded.items())))
    for name in quantized:
        q = fp4[name]
        tensors = layer_tensors(fmt, q, activation_scale(amax[name]) if amax else None)
        del state[f"{name}.weight"]
        state.update({f"{name}.{key}": t.cpu() for key, t in tensors.items()})
        exact = q.dequantize(torch.float32)
        error = float((decode(fmt, tensors) - exact).abs().max() / exact.abs().max().clamp(min=1e-30))
        members, change = shared.get(name, ((), 0.0))
        report.layers.append(ExportedLayer(name, tuple(q.shape), members, change, error))
    _write(report, {n: t.contiguous().cpu() for n, t in state.items()}, _hf_config(root), dtype, bool(amax))
    return report


def _write(
    report: ExportReport, state: dict[str, Tensor], hf_config: dict[str, Any], dtype: torch.dtype, activations: bool
) -> None:
    from safetensors.torch import save_file

    out = report.out_dir
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config = {**hf_config, "torch_dtype": str(dtype).removeprefix("torch.")}
    config["quantization_config"] = quantization_config(report.format, list(report.excluded), activations)
    (out / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    for name, content in extra_files(report.format, list(report.excluded), __version__).items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
