"""The NVFP4 checkpoint formats inference engines load: the tensors one quantized linear layer
becomes, each format's rule for turning them back into weights, and its configuration entries.

Both formats store our :class:`~quartet_compile.nvfp4.NVFP4Tensor` layout unchanged (E2M1 codes
packed two per byte, even element in the low nibble, ``[N, K/2]``; E4M3 block scales
``[N, K/16]``, row-major) and differ in how they name the tensor scale:

- ``compressed-tensors`` (format ``nvfp4-pack-quantized``, as the ``compressed-tensors`` package's
  ``NVFP4PackedCompressor`` reads it): ``weight_packed``, ``weight_scale`` and
  ``weight_global_scale``, the *encode* scale ``1 / tensor_scale``; a weight decodes as
  ``e2m1 * (weight_scale / weight_global_scale)``, which differs from ours by the rounding of
  the reciprocal and of the division (about one float32 ulp).
- ``modelopt`` (NVIDIA TensorRT Model Optimizer's NVFP4 checkpoint, as vLLM's ``modelopt``
  loader and compressed-tensors' ``ModelOptNvfp4Converter`` read it): ``weight`` (the packed
  codes), ``weight_scale`` and ``weight_scale_2``, the *decode* scale ``tensor_scale``; a weight
  decodes as ``(e2m1 * weight_scale) * weight_scale_2``, exactly ours, and ``hf_quant_config.json`` describes
  the checkpoint.
"""

from __future__ import annotations

import enum
from typing import Any

import torch
from torch import Tensor

from ..nvfp4.format import BLOCK, NVFP4Tensor, decode_e2m1, unpack_e2m1


class Format(str, enum.Enum):
    COMPRESSED_TENSORS = "compressed-tensors"
    MODELOPT = "modelopt"

    @classmethod
    def _missing_(cls, value: object) -> Format:
        raise ValueError(f"{value!r} is not an export format; choose from {', '.join(f.value for f in cls)}")


def layer_tensors(fmt: Format, q: NVFP4Tensor, input_scale: Tensor | None = None) -> dict[str, Tensor]:
    """The tensors of one quantized linear layer, by name relative to its module: its weight, and
    with ``input_scale`` (the static decode tensor scale of its input) a W4A4 layer's input scale."""
    scales = q.scales.contiguous()
    if fmt is Format.COMPRESSED_TENSORS:
        encode = (1.0 / q.tensor_scale.float()).reshape(1)
        tensors = {"weight_packed": q.codes.contiguous(), "weight_scale": scales, "weight_global_scale": encode}
        if input_scale is not None:
            tensors["input_global_scale"] = (1.0 / input_scale.float()).reshape(1)
        return tensors
    tensors = {"weight": q.codes.contiguous(), "weight_scale": scales, "weight_scale_2": q.tensor_scale.float().clone()}
    if input_scale is not None:
        tensors["input_scale"] = input_scale.float().reshape(())
    return tensors


def decode(fmt: Format, tensors: dict[str, Tensor]) -> Tensor:
    """float32 ``[N, K]`` weight from :func:`layer_tensors`' output, by the format's own rule."""
    codes = tensors["weight_packed" if fmt is Format.COMPRESSED_TENSORS else "weight"]
    values = decode_e2m1(unpack_e2m1(codes)).unflatten(-1, (-1, BLOCK))
    scales = tensors["weight_scale"].float().unsqueeze(-1)
    if fmt is Format.COMPRESSED_TENSORS:  # the package's dequantize: the scales divided first
        return (values * (scales / tensors["weight_global_scale"].float())).flatten(-2)
    # As a block-scaled GEMM applies them: block scales in the product, the tensor scale after.
    return (values * scales).flatten(-2) * tensors["weight_scale_2"].float()


def quantization_config(fmt: Format, excluded: list[str], activations: bool) -> dict[str, Any]:
    """The ``quantization_config`` entry of ``config.json`` for an NVFP4 checkpoint whose excluded
    modules stay unquantized: weight-only, or with ``activations`` W4A4 (inputs quantized by
    the engine in 16-blocks under the checkpoint's static tensor scale)."""
    if fmt is Format.COMPRESSED_TENSORS:
        nvfp4 = {
            "num_bits": 4,
            "type": "float",
            "symmetric": True,
            "group_size": BLOCK,
            "strategy": "tensor_group",
            "scale_dtype": str(torch.float8_e4m3fn),
        }
        scheme: dict[str, Any] = {"targets": ["Linear"], "weights": {**nvfp4, "dynamic": False}}
        if activations:
            scheme["input_activations"] = {**nvfp4, "dynamic": "local", "observer": "static_minmax"}
        return {
            "quant_method": "compressed-tensors",
            "format": "nvfp4-pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {"group_0": scheme},
            "ignore": excluded,
        }
    return {"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": BLOCK, "exclude_modules": excluded}


def extra_files(fmt: Format, excluded: list[str], producer: str) -> dict[str, dict[str, Any]]:
    """Files besides ``config.json`` and the weights that the format's readers look for."""
    if fmt is Format.MODELOPT:
        quantization = {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": BLOCK}
        return {
            "hf_quant_config.json": {
                "producer": {"name": "quartet-compile", "version": producer},
                "quantization": {**quantization, "exclude_modules": excluded},
            }
        }
    return {}
