"""Where the quantizers' time goes (CUDA): every kernel launch of the forward quantizer and of
MS-EDEN timed on its own with the profiler, next to a copy and a plain read of the same tensor,
and the registers and shared memory of each compiled kernel.

    python -m quartet_bench.studies.quantizer_breakdown --out bench/results
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from quartet_compile.kernels import ms_eden as ms_eden_module
from quartet_compile.kernels import quantize as quantize_module
from quartet_compile.kernels.ms_eden import ms_eden
from quartet_compile.kernels.quantize import quantize
from quartet_compile.kernels.rotation import rotation_matrix
from quartet_compile.nvfp4.randomness import random_signs

from .. import report

REPEATS = 30


def kernel_times_us(fn: Callable[[], object]) -> list[tuple[str, float]]:
    """Median device time of each kernel launch of ``fn``, in launch order (name, us)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(REPEATS):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    per_call = len(kernels) // REPEATS
    return [(kernels[i].name, statistics.median(e.device_time for e in kernels[i::per_call])) for i in range(per_call)]


def compiled_kernels(jit_fn) -> list[dict]:
    """Registers, spills and shared memory of every compiled variant of a Triton kernel."""
    caches = getattr(jit_fn, "device_caches", None) or {}
    rows = []
    for entry in caches.values():
        for kernel in (entry[0] if isinstance(entry, tuple) else entry).values():
            rows.append({"registers": kernel.n_regs, "spills": kernel.n_spills, "shared": kernel.metadata.shared,
                         "warps": kernel.metadata.num_warps})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--features", type=int, default=4096)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    x = torch.randn(args.tokens, args.features, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    rotation = rotation_matrix(random_signs(128, None, x.device))
    seed = torch.randint(0, 2**62, (), device="cuda")
    cases = {
        "copy (read + write bf16)": lambda: y.copy_(x),
        "read (amax of bf16, torch)": lambda: x.amax(),
        "forward rtn: codes": lambda: quantize(x),
        "forward 4/6: codes": lambda: quantize(x, four_over_six=True),
        "ms-eden: codes": lambda: ms_eden(x, rotation, seed),
        "ms-eden: bf16 operand": lambda: ms_eden(x, rotation, seed, codes=False, unscaled_bf16=True),
    }
    rows = []
    for case, fn in cases.items():
        for launch, (name, us) in enumerate(kernel_times_us(fn)):
            rows.append({"case": case, "launch": launch, "kernel": name, "us": us})
    compiled = {"_quantize_kernel": compiled_kernels(quantize_module._quantize_kernel),
                "_ms_eden_kernel": compiled_kernels(ms_eden_module._ms_eden_kernel)}  # fmt: skip
    header = ["case", "launch", "kernel", "us"]
    cells = [[r["case"], str(r["launch"]), r["kernel"][:40], f"{r['us']:.1f}"] for r in rows]
    print(report.text_table(header, cells))
    for name, variants in compiled.items():
        print(name, variants)
    if args.out:
        meta = {**report.environment(x.device), "shape": [args.tokens, args.features]}
        payload = {**meta, "launches": rows, "compiled": compiled}
        md = [
            *report.markdown_header("Quantizer time by kernel launch", meta),
            report.markdown_table(header, cells),
            "",
        ]
        md += [f"`{name}` compiled variants: {variants}" for name, variants in compiled.items()]
        report.write_result(args.out, "quantizer-breakdown", payload, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
