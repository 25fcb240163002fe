"""What one Inductor setting changes in a quantized training step: in one process, the variant
compiled with Inductor's defaults and with ``--setting NAME=VALUE``, alternately (``--rounds``
times each), each measured as the step profile measures (median step and host time, kernel sum,
launches).

    python -m quartet_bench.studies.inductor_setting --setting static_launch_user_defined_triton_kernels=True \\
        --hf-config llama --hf-set hidden_size=1024 ... --batch 8 --seq-len 1024

One process, because default-mode host time differs between processes by more than most settings
move it; alternating the arms spreads slow drift over both. Both arms compile their kernels in that
process too (:data:`IN_PROCESS`).
"""

from __future__ import annotations

import argparse
import ast
import statistics
from collections.abc import Callable, Iterator

import torch
import torch._inductor.config

from .. import report
from ..arguments import HelpFormatter, add_model_arguments, add_step_arguments, spec_from
from ..training import TrainSettings
from .step_profile import measure_all, training_step

IN_PROCESS = {"compile_threads": 1}
"""Inductor settings of both arms: Inductor's compile workers take only a few settings from this
process's configuration (the rest from their environment), and some settings are read there
(whether a user kernel is launched by Inductor's static launcher, for one), so a setting patched
here would not reach kernels compiled in a worker."""


def setting(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    if not hasattr(torch._inductor.config, name):
        raise argparse.ArgumentTypeError(f"torch._inductor.config has no setting {name!r}")
    return name, ast.literal_eval(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    add_model_arguments(parser, "30m")
    add_step_arguments(parser, steps=5, name="inductor-setting")
    parser.add_argument("--setting", type=setting, required=True, help="NAME=VALUE of torch._inductor.config")
    parser.add_argument("--variant", default="quartet2")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    spec = spec_from(args)
    name, value = args.setting
    meta = {**report.environment(device), "model": spec.label, "batch": args.batch, "seq_len": args.seq_len,
            "setting": name, "value": value, "default": getattr(torch._inductor.config, name)}  # fmt: skip
    settings = TrainSettings(batch=args.batch, seq_len=args.seq_len)

    def steps() -> Iterator[tuple[tuple[int, str], Callable[[], None]]]:
        for round_ in range(args.rounds):
            for arm, patch in (("default", {}), ("set", {name: value})):
                with torch._inductor.config.patch({**IN_PROCESS, **patch}):  # spans the first calls, which compile
                    yield (round_, arm), training_step(args.variant, spec, settings, device, "inductor")[0]

    torch._dynamo.reset()
    rows = [{"round": round_, "arm": arm, **row} for (round_, arm), row in
            measure_all(steps(), device, args.warmup, args.steps)]  # fmt: skip
    median = {
        arm: {k: statistics.median(r[k] for r in rows if r["arm"] == arm) for k in ("step_ms", "host_ms")}
        for arm in ("default", "set")
    }
    lines = [*report.markdown_header(f"Inductor setting {name}: {meta['default']} and {value} (one process)", meta)]
    lines += [f"{spec.label}, {args.variant}, batch {args.batch} x {args.seq_len}, default mode; ms per step.", ""]
    cells = [[str(r["round"]), repr(value if r["arm"] == "set" else meta["default"]), f"{r['step_ms']:.2f}",
              f"{r['host_ms']:.2f}", f"{r['kernel_ms']:.2f}", f"{r['launches']:.0f}"] for r in rows]  # fmt: skip
    lines.append(report.markdown_table(["round", name, "step", "host", "kernels", "launches"], cells))
    lines += ["", f"Medians: step {median['default']['step_ms']:.2f} -> {median['set']['step_ms']:.2f} ms, host "
              f"{median['default']['host_ms']:.2f} -> {median['set']['host_ms']:.2f} ms."]  # fmt: skip
    report.publish("\n".join(lines) + "\n", args.out, args.name, {**meta, "rows": rows, "median": median})


if __name__ == "__main__":
    main()
