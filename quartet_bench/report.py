"""Tables, JSON and plots of training comparisons: one format for the demo, ``quartet-bench``
and the studies in ``bench/``, so every result file carries its device, versions and command."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from quartet_compile.version import versions as package_versions

from .training import RunResult
from .variants import BASELINE


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions, host and the command line: recorded in every result file."""
    versions = package_versions(("triton", "quartet-compile", "transformers", "torch-tensorrt", "fouroversix"))
    versions["cuda"] = torch.version.cuda
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    command = getattr(sys, "orig_argv", sys.argv)  # orig_argv keeps "python -m module" (Python >= 3.10)
    return {"device": name, "versions": versions, "host": host_machine(),
            "command": shlex.join([Path(command[0]).name, *command[1:]])}  # fmt: skip


def host_machine() -> dict[str, Any]:
    """The CPU that issues the launches: its model, the CPUs this process may run on and the load
    when the run started. A default-mode step of a small model is bound by the host, whose speed
    per launch varied between machines and processes by up to 2x."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"cpu": model, "cpus": cpus, "load_1min": load}


def _baseline(results: Sequence[RunResult]) -> RunResult | None:
    ok = [r for r in results if r.error is None and r.step_ms]
    return next((r for r in ok if r.variant == BASELINE), ok[0] if ok else None)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _bpb_gap(result: RunResult, base: RunResult | None) -> str:
    """Validation bpb relative to the baseline's, in percent."""
    if base is None or not base.val_bpb or not result.val_bpb:
        return "-"
    return f"{100 * (result.final_val_bpb / base.final_val_bpb - 1):+.2f}%"


def summary_rows(results: Sequence[RunResult]) -> tuple[list[str], list[list[str]]]:
    """Cells of the summary table; ratios are to the baseline measured in the same run."""
    base = _baseline(results)
    header = ["variant", "step ms", "x base", "tokens/s", "compile s", "peak GiB", "mem x base", "graphs",
              "breaks", "recompiles", "loss", "val bpb", "bpb gap"]  # fmt: skip
    rows = []
    for r in results:
        if r.error is not None:
            rows.append([r.label, "not run"] + ["-"] * (len(header) - 2))
            continue
        mem = r.peak_memory_bytes / 2**30 if r.peak_memory_bytes else None
        base_mem = base.peak_memory_bytes if base else None
        rows.append([
            r.label,
            _fmt(r.median_step_ms, ".1f"),
            _fmt(r.median_step_ms / base.median_step_ms if base else None, ".2f"),
            _fmt(r.tokens_per_s, ",.0f"),
            _fmt(r.compile_s, ".1f"),
            _fmt(mem, ".2f"),
            _fmt(r.peak_memory_bytes / base_mem if mem and base_mem else None, ".2f"),
            str(r.graphs),
            str(r.graph_breaks),
            str(r.recompiles),
            _fmt(r.final_loss, ".4f"),
            _fmt(r.final_val_bpb, ".4f"),
            _bpb_gap(r, base),
        ])  # fmt: skip
    return header, rows


LEGEND = (
    "step ms: median wall time of a training step after the warm-up steps; x base: over the "
    f"{BASELINE} (BF16) row of the same run; tokens/s: tokens per step over the median step time.",
    "compile s: the first step's time minus a median step; every variant compiles cold (Inductor's "
    "caches off), after one warm-up compile.",
    "peak GiB, mem x base: torch.cuda.max_memory_allocated, measured on CUDA only ('-' elsewhere).",
    "graphs: graphs compiled; breaks: graph breaks; recompiles: graphs compiled after the first step.",
    "loss: mean training loss of the last 10 steps; val bpb: validation bits per byte at the end; "
    "bpb gap: val bpb over the baseline's, in percent.",
)
"""What the summary table's columns mean, printed under it and written under the markdown one."""


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(header, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*header).rstrip(), line.format(*("-" * w for w in widths)),
                      *(line.format(*r).rstrip() for r in rows)])  # fmt: skip


def failures(results: Sequence[RunResult]) -> str:
    """Why each variant that did not run did not (missing package, unsupported device...)."""
    return "\n".join(f"{r.label}: not run: {r.error}" for r in results if r.error is not None)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows])


def curve_table(results: Sequence[RunResult]) -> str:
    """Validation bits per byte at each evaluation step, one column per variant."""
    trained = [r for r in results if r.val_bpb]
    if not trained:
        return ""
    steps = sorted({s for r in trained for s, _ in r.val_bpb})
    header = ["step"] + [f"{r.label} bpb" for r in trained]
    rows = [[str(s)] + [_fmt(dict(r.val_bpb).get(s), ".4f") for r in trained] for s in steps]
    return text_table(header, rows)


def markdown_header(title: str, meta: dict[str, Any]) -> list[str]:
    """Title, device, versions, host (where recorded) and command: the first lines of every
    markdown result file."""
    host = meta.get("host")
    machine = [f"Host: {host['cpu']}, {host['cpus']} CPUs for this process, load {host['load_1min']}"] if host else []
    return [f"# {title}", "", f"Device: {meta.get('device')}; versions: {meta.get('versions')}", *machine,
            f"Command: `{meta.get('command')}`", ""]  # fmt: skip


def write_result(out: Path, stem: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """``{stem}.json`` holding ``payload`` and ``{stem}.md`` holding ``markdown`` under ``out``
    (created if missing): the pair every benchmark commits. Returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(payload, indent=1))
    md_path.write_text(markdown)
    return json_path, md_path


def publish(markdown: str, out: Path | None, stem: str, payload: dict[str, Any]) -> None:
    """How a study ends: its markdown printed and, given an ``out`` directory, written there with
    ``payload`` (:func:`write_result`)."""
    print(markdown)
    if out:
        write_result(out, stem, payload, markdown)


def write(results: Sequence[RunResult], out: Path, stem: str, meta: dict[str, Any]) -> list[Path]:
    """``{stem}.json`` (everything, per-step losses included), ``{stem}.md`` and, when matplotlib
    is installed, ``{stem}.png``. Returns the paths written."""
    payload = {**meta, "results": [r.to_json() for r in results]}
    header, rows = summary_rows(results)
    md = [*markdown_header(stem, meta), markdown_table(header, rows), "", *LEGEND, "", failures(results)]
    md += meta.get("notes", [])
    json_path, md_path = write_result(out, stem, payload, "\n".join(md) + "\n")
    png = plot(results, out / f"{stem}.png", title=stem)
    return [json_path, md_path] + ([png] if png else [])


def load(path: Path) -> tuple[list[RunResult], dict[str, Any]]:
    """Read a result file back (to re-plot or re-tabulate results made on another machine)."""
    payload = json.loads(Path(path).read_text())
    return [RunResult.from_json(r) for r in payload.pop("results")], payload


def _val_gap_curves(results: Sequence[RunResult]) -> dict[str, list[tuple[int, float]]]:
    """Per non-baseline run, its validation bpb in percent above the mean of the baseline's runs
    (every backward seed) at each evaluated step: the gaps are a fraction of a percent of curves
    that fall by half, and only this view shows them."""
    base_runs = [r for r in results if r.variant == BASELINE and r.val_bpb]
    base: dict[int, list[float]] = {}
    for r in base_runs:
        for step, bpb in r.val_bpb:
            base.setdefault(step, []).append(bpb)
    mean = {step: sum(values) / len(values) for step, values in base.items() if len(values) == len(base_runs)}
    curves = {}
    for r in results:
        points = [(step, 100 * (bpb / mean[step] - 1)) for step, bpb in r.val_bpb if step in mean]
        if r.variant != BASELINE and points:
            curves[r.label] = points
    return curves


def plot(results: Sequence[RunResult], path: Path, title: str) -> Path | None:
    """Training loss and validation bpb per step, median step time per variant and, with a
    BF16 baseline, each run's validation gap to it per step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'quartet-compile[bench]')", file=sys.stderr)
        return None
    ok = [r for r in results if r.error is None]
    gaps = _val_gap_curves(ok)
    fig, axes = plt.subplots(1, 4 if gaps else 3, figsize=(21 if gaps else 16, 4.5))
    ax_loss, ax_bpb, ax_time = axes[:3]
    if gaps:
        for label, points in gaps.items():
            axes[3].plot(*zip(*points, strict=True), marker="o", label=label)
        axes[3].axhline(0.0, color="black", linewidth=0.8)
        axes[3].set(xlabel="step", ylabel="% vs mean BF16 bpb at that step", title="validation gap to BF16")
        axes[3].legend()
    for r in ok:
        if r.losses and r.val_bpb:
            window = max(1, len(r.losses) // 50)
            smooth = [sum(r.losses[max(0, i - window + 1) : i + 1]) / len(r.losses[max(0, i - window + 1) : i + 1])
                      for i in range(len(r.losses))]  # fmt: skip
            ax_loss.plot(range(1, len(smooth) + 1), smooth, label=r.label)
            ax_bpb.plot(*zip(*r.val_bpb, strict=True), marker="o", label=r.label)
    ax_loss.set(xlabel="step", ylabel="train loss (nats/byte, smoothed)", title="training loss")
    ax_bpb.set(xlabel="step", ylabel="bits per byte", title="validation")
    timed = [r for r in ok if r.step_ms]
    ax_time.barh([r.label for r in timed], [r.median_step_ms for r in timed])
    ax_time.set(xlabel="median step time (ms)", title="speed")
    for ax in (ax_loss, ax_bpb):
        if ax.lines:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
