"""How far the host can run ahead of a busy GPU: the time to issue N launches of a kernel that
keeps the device busy for ``--kernel-us`` each, for growing N. Issue time stays at the launch
cost while the stream's queue has room, then grows with the device time of the launches beyond
it. A training step that issues more launches than the queue holds therefore reports host time
close to its step time even when its Python is fast: the step profile's "host" column reads as
host-bound only below that many launches.

    python -m quartet_bench.studies.launch_queue --out bench/results
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from .. import report
from ..arguments import HelpFormatter


def issue_ms(launches: int, cycles: int) -> tuple[float, float]:
    """Host ms to issue ``launches`` sleeps of ``cycles`` clock cycles each, and ms until the
    device has run them, from an idle device."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(launches):
        torch.cuda._sleep(cycles)
    issued = time.perf_counter()
    torch.cuda.synchronize()
    return (issued - start) * 1e3, (time.perf_counter() - start) * 1e3


def _cycles_per_us(cycles: int = 10**7) -> float:
    """The sleep kernel's clock, timed with CUDA events (its clock varies with the GPU's)."""
    torch.cuda._sleep(cycles)  # warm-up
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(cycles)
    end.record()
    end.synchronize()
    return cycles / (start.elapsed_time(end) * 1e3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--launches", default="256,512,768,1000,1024,1100,1200,1500,2000")
    parser.add_argument("--kernel-us", type=float, default=100.0, help="device time of each launch")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="launch-queue")
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    cycles = int(args.kernel_us * _cycles_per_us())
    rows = []
    for launches in (int(n) for n in args.launches.split(",")):
        host, total = issue_ms(launches, cycles)
        rows.append({"launches": launches, "host_ms": host, "device_ms": total})
        print(rows[-1], flush=True)
    meta = {**report.environment(device), "kernel_us": args.kernel_us, "cycles": cycles}
    lines = [*report.markdown_header("Launch queue: host issue time against launches in flight", meta)]
    lines += [f"Launches of a {args.kernel_us:.0f} us kernel from an idle device; ms.", ""]
    cells = [[str(r["launches"]), f"{r['host_ms']:.1f}", f"{r['device_ms']:.1f}"] for r in rows]
    lines.append(report.markdown_table(["launches", "host issue", "until the device is done"], cells))
    report.publish("\n".join(lines) + "\n", args.out, args.name, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
