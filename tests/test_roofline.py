"""The roofline model composes its calibrated kernels into the measured H100 layer, and its
GEMM term is the datasheet's tensor-rate ratio."""

from __future__ import annotations

import json

import pytest

from quartet_bench.studies import roofline


@pytest.fixture(scope="module")
def result() -> dict:
    kernels = json.loads((roofline.RESULTS / "kernels.json").read_text())
    profile = json.loads((roofline.RESULTS / "step-profile-llama150m.json").read_text())
    return roofline.model(kernels, profile)


def test_the_h100_layer_composes_from_its_kernels(result):
    """The layer row of kernels.json is not one of the calibrating rows: the six quantizer passes
    and three GEMMs composed from them must give its measured kernel time."""
    for row in result["validation"][:2]:
        assert row["predicted_ms"] == pytest.approx(row["measured_ms"], rel=0.1), row


def test_the_model_states_its_miss_on_small_layers(result):
    """At the 156M model's shapes the quantizers run below their large-shape efficiency: the
    model underpredicts, by a documented margin, rather than silently fitting."""
    quantizers = result["validation"][2]
    assert 0.5 < quantizers["predicted_ms"] / quantizers["measured_ms"] < 1.0


def test_gemm_speedups_are_the_datasheet_rate_ratios(result):
    for row in result["predictions"]:
        device = roofline.DEVICES[row["device"]]
        expected = (device.fp4_tflops or device.bf16_tflops) / device.bf16_tflops
        assert row["linear 16384x4096->4096, GEMMs only"] == pytest.approx(expected)
