"""Roofline model of a quartet2 linear layer and of a training step, for GPUs we cannot run on.

    python -m quartet_bench.studies.roofline [--out bench/results]

Each kernel of a quantized layer is timed as ``max(bytes / bandwidth, elements * work / FP32
rate)``: the quantizers are bound by their instruction count as much as by memory, so each
family's *work per element* (FP32-operation equivalents) is calibrated from its H100
measurement in ``bench/results/kernels.json``. GEMMs run at the device's dense tensor rate (BF16,
or NVFP4 on Blackwell's native route) times the efficiency cuBLAS BF16 reached on the H100. A
training step is the BF16 step measured on the H100 (``step-profile-llama150m.json``), its GEMMs
scaled by tensor rate and everything else by bandwidth, with the quantized layers' extra time
added. Datasheet rates are dense (no sparsity); sources in :data:`DEVICES`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
FP4_BYTES = 0.5 + 1 / 16
"""Bytes per element of an NVFP4 tensor: a 4-bit code and one E4M3 scale per 16."""


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth_tbs: float
    bf16_tflops: float
    fp4_tflops: float | None
    """Dense block-scaled NVFP4 tensor rate; ``None`` where there is no FP4 MMA (bf16-operand route)."""
    fp32_tflops: float
    source: str


DEVICES = {
    "H100": Device("H100 SXM", 3.35, 989.0, None, 67.0, "NVIDIA H100 datasheet, SXM5"),
    "B200": Device(
        "B200 (HGX, 1000 W)", 8.0, 2250.0, 9000.0, 80.0,
        "NVIDIA's HGX B200 figures as listed at glennklockwood.com/garden/processors/B200",
    ),
    "RTX 5090": Device(
        "RTX 5090", 1.792, 209.5, 1676.0, 104.8,
        "NVIDIA's figures as listed at codesota.com/hardware/rtx-5090 (FP16 dense) and "
        "spheron.network/blog/nvidia-rtx-5090-specs (FP4 3352 sparse, halved; FP32)",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """What the H100 measurements fix: achieved fractions of the datasheet rates, and each
    quantizer family's work per element in FP32-operation equivalents."""

    bandwidth_efficiency: float
    tensor_efficiency: float
    forward_work: float
    ms_eden_work: float
    ms_eden_fp4_work: float

    @classmethod
    def from_h100(cls, kernels: dict) -> Calibration:
        h100 = DEVICES["H100"]
        rows = {row["kernel"]: row for row in kernels["quantizers"]}
        gemm = max(kernels["gemms"], key=lambda row: row["M"] * row["N"] * row["K"])
        elements = kernels["linear"]["T"] * kernels["linear"]["K"]

        def work(name: str) -> float:
            return rows[name]["ms"] * 1e-3 * h100.fp32_tflops * 1e12 / elements

        return cls(
            bandwidth_efficiency=kernels["copy_GBps"] / (h100.bandwidth_tbs * 1e3),
            tensor_efficiency=gemm["cublas_bf16_tflops"] / h100.bf16_tflops,
            forward_work=work("forward 4/6: codes + bf16 operand"),
            ms_eden_work=work("ms-eden g along N: bf16 operand"),
            ms_eden_fp4_work=work("ms-eden saved FP4 x^T along T (re-quantize): bf16 operand"),
        )


def _kernel_ms(device: Device, cal: Calibration, elements: float, nbytes: float, work: float) -> float:
    memory = nbytes / (device.bandwidth_tbs * 1e12 * cal.bandwidth_efficiency)
    compute = elements * work / (device.fp32_tflops * 1e12)
    return 1e3 * max(memory, compute)


def linear_ms(device: Device, cal: Calibration, t: int, k: int, n: int) -> dict[str, float]:
    """Forward+backward of one linear layer ``[t, k] x [n, k]^T``: BF16, and quartet2 on the
    device's route (native FP4 GEMMs where it has them, else bf16-operand GEMMs)."""
    native = device.fp4_tflops is not None
    operand = FP4_BYTES if native else FP4_BYTES + 2  # the bf16-operand route also writes bf16
    gemm_rate = (device.fp4_tflops if native else device.bf16_tflops) * 1e12 * cal.tensor_efficiency
    bf16_gemms = 3 * 2 * t * k * n / (device.bf16_tflops * 1e12 * cal.tensor_efficiency) * 1e3
    quantizers = sum(
        _kernel_ms(device, cal, elements, elements * (read + operand), work)
        for elements, read, work in [
            (t * k, 4, cal.forward_work),  # x: statistics and quantize passes read it
            (n * k, 4, cal.forward_work),  # W
            (t * n, 4, cal.ms_eden_work),  # g along N, for dx
            (t * n, 4, cal.ms_eden_work),  # g^T along T, for dW
            (n * k, 2 * FP4_BYTES, cal.ms_eden_fp4_work),  # saved W re-quantized along N
            (t * k, 2 * FP4_BYTES, cal.ms_eden_fp4_work),  # saved x re-quantized along T
        ]
    )
    gemms = 3 * 2 * t * k * n / gemm_rate * 1e3
    return {"bf16_ms": bf16_gemms, "quartet2_ms": gemms + quantizers, "gemm_ms": gemms, "quantizer_ms": quantizers}


LLAMA_150M_LINEARS = [(1024, 1024), (1024, 256), (1024, 256), (1024, 1024), (1024, 2816), (1024, 2816), (2816, 1024)]
"""``(K, N)`` of the quantized projections of one block of the 156M Llama of the step profile
(hidden 1024, 16 heads, 4 KV heads, MLP 2816): q, k, v, o, gate, up, down."""


def step(device: Device, cal: Calibration, profile: dict) -> dict[str, float]:
    """The 156M Llama's step time, BF16 and quartet2, from the H100 BF16 step's kernel families."""
    h100 = DEVICES["H100"]
    families = next(row for row in profile["rows"] if row["variant"] == "inductor")["families_ms"]
    tokens = profile["batch"] * profile["seq_len"]
    layers = [linear_ms(device, cal, tokens, k, n) for k, n in LLAMA_150M_LINEARS] * 8
    gemm_scale = h100.bf16_tflops / device.bf16_tflops
    memory_scale = h100.bandwidth_tbs / device.bandwidth_tbs
    rest = (
        families["gemm"] * gemm_scale
        + (families["attention"] + families["optimizer"] + families["other"]) * memory_scale
    )
    extra = sum(row["quartet2_ms"] - row["bf16_ms"] for row in layers)
    quantizers = sum(row["quantizer_ms"] for row in layers)
    return {"bf16_step_ms": rest, "quartet2_step_ms": rest + extra, "quantizer_ms": quantizers}


PAPER_LINEAR_SPEEDUP = 4.2
"""The Quartet II paper's largest reported linear-layer speedup over BF16 on Blackwell."""

SHAPES = [(16384, 4096, 4096), (8192, 1024, 2816)]


def model(kernels: dict, profile: dict) -> dict:
    """Calibration, H100 validation and every device's predictions."""
    cal = Calibration.from_h100(kernels)
    h100 = DEVICES["H100"]
    measured_linear = kernels["linear"]
    t, k, n = measured_linear["T"], measured_linear["K"], measured_linear["N"]
    predicted_linear = linear_ms(h100, cal, t, k, n)
    rows = {row["variant"]: row for row in profile["rows"]}
    predicted_step = step(h100, cal, profile)
    validation = [
        {"what": f"linear {t} x {k} -> {n}, BF16 kernels", "measured_ms": measured_linear["bf16_kernel_ms"],
         "predicted_ms": predicted_linear["bf16_ms"]},
        {"what": f"linear {t} x {k} -> {n}, quartet2 kernels", "measured_ms": measured_linear["quartet2_kernel_ms"],
         "predicted_ms": predicted_linear["quartet2_ms"]},
        {"what": "156M step, quantizer kernels", "measured_ms": rows["quartet2"]["families_ms"]["quantizers"],
         "predicted_ms": predicted_step["quantizer_ms"]},
        {"what": "156M step, quartet2 kernels", "measured_ms": rows["quartet2"]["kernel_ms"],
         "predicted_ms": predicted_step["quartet2_step_ms"]},
    ]  # fmt: skip
    predictions = []
    for name, device in DEVICES.items():
        row = {"device": name, "route": "native FP4 GEMM" if device.fp4_tflops else "bf16-operand GEMM"}
        for t2, k2, n2 in SHAPES:
            layer = linear_ms(device, cal, t2, k2, n2)
            row[f"linear {t2}x{k2}->{n2}"] = layer["bf16_ms"] / layer["quartet2_ms"]
            row[f"linear {t2}x{k2}->{n2}, GEMMs only"] = layer["bf16_ms"] / layer["gemm_ms"]
        predicted = step(device, cal, profile)
        row["156M step"] = predicted["bf16_step_ms"] / predicted["quartet2_step_ms"]
        predictions.append(row)
    return {
        "calibration": asdict(cal),
        "devices": {name: asdict(device) for name, device in DEVICES.items()},
        "validation": validation,
        "predictions": predictions,
        "paper_linear_speedup": PAPER_LINEAR_SPEEDUP,
    }


def _markdown(result: dict) -> str:
    lines = ["# Roofline model", "", f"Command: `{result['command']}`", "",
             "Speedups over BF16 (>1: faster). Calibration (H100): " + ", ".join(
                 f"{k} {v:.3g}" for k, v in result["calibration"].items()), "",
             "## H100 validation (kernel time)", "", "| what | measured ms | predicted ms | predicted / measured |",
             "|---|---:|---:|---:|"]  # fmt: skip
    for row in result["validation"]:
        ratio = row["predicted_ms"] / row["measured_ms"]
        lines.append(f"| {row['what']} | {row['measured_ms']:.3f} | {row['predicted_ms']:.3f} | {ratio:.2f} |")
    keys = [k for k in result["predictions"][0] if k not in ("device", "route")]
    lines += ["", "## Predicted speedup over BF16", "", "| device | route | " + " | ".join(keys) + " |",
              "|---|---|" + "---:|" * len(keys)]  # fmt: skip
    for row in result["predictions"]:
        lines.append(f"| {row['device']} | {row['route']} | " + " | ".join(f"{row[k]:.2f}x" for k in keys) + " |")
    lines += ["", f"The Quartet II paper reports linear-layer speedups up to {result['paper_linear_speedup']}x on "
              "Blackwell with its own kernels.", "", "Datasheet rates (dense): " + "; ".join(
                  f"{d['name']}: {d['bandwidth_tbs']} TB/s, BF16 {d['bf16_tflops']}, FP4 {d['fp4_tflops']}, "
                  f"FP32 {d['fp32_tflops']} TFLOP/s ({d['source']})" for d in result["devices"].values())]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write roofline.json and roofline.md here")
    args = parser.parse_args()
    kernels = json.loads((RESULTS / "kernels.json").read_text())
    profile = json.loads((RESULTS / "step-profile-llama150m.json").read_text())
    result = {"command": "python -m quartet_bench.studies.roofline", **model(kernels, profile)}
    text = _markdown(result)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.out / "roofline.md").write_text(text)


if __name__ == "__main__":
    main()
