"""Launch shapes of MS-EDEN's two passes (CUDA): the backward quantizer's amax and quantize
passes timed on their own at the operand shapes of a model's linears, for several tile heights,
warps and row tiles per program, with each compiled kernel's registers and shared memory and
the programs of it that one SM holds, and the ways of grouping a backward's operands into
launches. The ``ms_eden_amax`` and ``ms_eden_quantize`` entries of ``kernels/configs.py`` are
read off its model totals; its per-operand table shows what each operand of a backward GEMM costs
alone.

    python -m quartet_bench.studies.ms_eden_tiles --out bench/results
    ncu -k regex:_ms_eden_kernel --launch-skip 2 --launch-count 2 \
        python -m quartet_bench.studies.ms_eden_tiles --profile-case   # the passes under Nsight Compute

(``--launch-skip`` and ``--launch-count``: the shipped launches of one backward, two with one
quantize launch for both GEMMs.)

Defaults: the 156M Llama of the step profile (hidden 1024, GQA with 4 of 16 heads, MLP 2816,
8 layers, 8 x 1024 tokens). Every pass writes the bf16 operand of the Hopper GEMM.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from quartet_compile.kernels import launch as launch_module
from quartet_compile.kernels import ms_eden as ms_eden_module
from quartet_compile.kernels.configs import config, multiprocessors, override
from quartet_compile.kernels.ms_eden import Operand, ms_eden, ms_eden_gemms, tiles_per_program
from quartet_compile.kernels.quantize import quantize
from quartet_compile.kernels.rotation import rotation_matrix
from quartet_compile.nvfp4.randomness import random_signs

from .. import report
from ..arguments import HelpFormatter
from .quantizer_breakdown import kernel_times_us

LLAMA_150M_LINEARS = {(1024, 1024): 2, (1024, 256): 2, (1024, 2816): 2, (2816, 1024): 1}
"""(in, out) features of the 156M Llama's linears and how many of each one layer has: q and o,
k and v, gate and up, down."""

CANDIDATES = [
    {"BLOCK_R": rows, "num_warps": warps, "MAX_TILES": tiles}
    for rows, warps, tiles in [
        (64, 8, 1),
        (64, 8, 2),
        (64, 8, 4),
        (64, 8, 8),
        (128, 8, 1),
        (128, 8, 2),
        (32, 8, 2),
        (32, 8, 4),
    ]
]
"""Launch configurations tried for both passes; PROGRAMS_PER_SM stays as shipped."""

PASSES = ("ms_eden_amax", "ms_eden_quantize")


@contextlib.contextmanager
def _both_passes(values: dict) -> Iterator[None]:
    with override(PASSES[0], values), override(PASSES[1], values):
        yield


HOPPER_SM = {"registers": 65536, "shared": 233472, "threads": 2048}
"""What one H100 or H200 SM holds: registers, bytes of shared memory, threads."""


def sm_limits(device: torch.device) -> dict[str, int]:
    """:data:`HOPPER_SM` for ``device``, from its properties where torch reports them."""
    props = torch.cuda.get_device_properties(device)
    return {
        "registers": getattr(props, "regs_per_multiprocessor", HOPPER_SM["registers"]),
        "shared": getattr(props, "shared_memory_per_multiprocessor", HOPPER_SM["shared"]),
        "threads": getattr(props, "max_threads_per_multi_processor", HOPPER_SM["threads"]),
    }


def programs_per_sm(registers: int, shared: int, warps: int, sm: dict[str, int] = HOPPER_SM) -> int:
    """Programs of a compiled kernel that fit one SM at once: registers are allocated per warp in
    units of 256, and every program reserves 1 KB of shared memory beyond its own."""
    per_warp = -(-registers * 32 // 256) * 256
    return min(sm["registers"] // (per_warp * warps), sm["shared"] // (shared + 1024), sm["threads"] // (32 * warps))


def compiled_passes(fn: Callable[[], object], device: torch.device) -> list[dict]:
    """Registers, shared memory and programs per SM of the MS-EDEN kernels that ``fn`` launches,
    in launch order: both kernel caches are emptied first, so the variants found after ``fn`` are
    its own (Triton's on-disk cache makes the recompilation a load)."""
    kernel = ms_eden_module._ms_eden_kernel
    kernel.device_caches.clear()
    launch_module._compiled.clear()
    fn()
    torch.cuda.synchronize()
    rows = []
    for entry in kernel.device_caches.values():
        for compiled in (entry[0] if isinstance(entry, tuple) else entry).values():
            registers, shared, warps = compiled.n_regs, compiled.metadata.shared, compiled.metadata.num_warps
            rows.append(
                {
                    "registers": registers,
                    "spills": compiled.n_spills,
                    "shared": shared,
                    "programs_per_sm": programs_per_sm(registers, shared, warps, sm_limits(device)),
                }
            )
    return rows


def pass_times_us(fn: Callable[[], object]) -> list[float]:
    """Median device time of each MS-EDEN launch of ``fn``: the amax pass, then the quantize pass."""
    return [us for name, us in kernel_times_us(fn) if "_ms_eden_kernel" in name]


def _operands(tokens: int, features_in: int, features_out: int, device: torch.device) -> dict:
    g = torch.randn(tokens, features_out, device=device, dtype=torch.bfloat16)
    x = torch.randn(tokens, features_in, device=device, dtype=torch.bfloat16)
    w = torch.randn(features_out, features_in, device=device, dtype=torch.bfloat16)
    return {"g": g, "xq": quantize(x, four_over_six=True).fp4, "wq": quantize(w, four_over_six=True).fp4}


def _gemms(ops: dict, seeds: list[torch.Tensor]) -> tuple[tuple[Operand, Operand], ...]:
    """The two backward GEMMs' operands (dgrad: g and the saved W^T; wgrad: g^T and the saved
    x^T), as the layer gives them."""
    options = {"codes": False, "unscaled_bf16": True}
    return (
        (Operand(ops["g"], seeds[0], False, **options), Operand(ops["wq"], seeds[1], True, **options)),
        (Operand(ops["g"], seeds[2], True, **options), Operand(ops["xq"], seeds[3], True, **options)),
    )


LAUNCHES = {
    "one launch per pass": (2, False, True, (True, False)),
    "one launch per pass, g^T read again": (2, False, False, (True, False)),
    "quantize per GEMM": (1, False, True, (True, False, False)),
    "both passes per GEMM": (1, True, False, (True, False, True, False)),
}
"""How the backward launches its MS-EDEN passes: the GEMMs per quantize launch (``GEMMS``),
whether each GEMM's operands take an amax launch of their own (the layout before the four-operand
amax pass), whether a four-operand amax launch reads ``g`` once for ``g`` and ``g^T`` (``TWIN``),
and which of the launches are amax passes."""


def _shipped_launches() -> str:
    """The entry of :data:`LAUNCHES` that the shipped configuration launches."""
    per_launch, twin = config(PASSES[1])["GEMMS"], config(PASSES[0])["TWIN"]
    return next(
        name for name, (n, separate, one_read, _) in LAUNCHES.items()
        if n == per_launch and not separate and one_read == twin
    )  # fmt: skip


def _launch_fns(ops: dict, rotation: torch.Tensor, seeds: list[torch.Tensor]) -> dict[str, Callable[[], object]]:
    stats = torch.zeros(4, 2, device=rotation.device)
    gemms = _gemms(ops, seeds)

    def launches(per_launch: int, separate: bool, twin: bool) -> Callable[[], object]:
        def fn() -> object:
            with override(PASSES[1], {"GEMMS": per_launch}), override(PASSES[0], {"TWIN": twin}):
                if separate:
                    return [list(ms_eden_gemms([gemm], rotation, stats)) for gemm in gemms]
                return list(ms_eden_gemms(gemms, rotation, stats))

        return fn

    return {name: launches(*layout[:3]) for name, layout in LAUNCHES.items()}


def _alone(ops: dict, rotation: torch.Tensor, seed: torch.Tensor) -> dict[str, tuple[Callable[[], object], int]]:
    """Each operand of the pairs quantized on its own, and its element count."""
    options = {"codes": False, "unscaled_bf16": True}
    g, wq, xq = ops["g"], ops["wq"], ops["xq"]
    saved = {"transpose": True, **options}
    return {
        "g along out": (lambda: ms_eden(g, rotation, seed, **options), g.numel()),
        "saved W^T along out": (lambda: ms_eden(wq, rotation, seed, **saved), 2 * wq.codes.numel()),
        "g^T along tokens (strided)": (lambda: ms_eden(g, rotation, seed, transpose=True, **options), g.numel()),
        "saved x^T along tokens": (lambda: ms_eden(xq, rotation, seed, **saved), 2 * xq.codes.numel()),
    }


def _tiles(shape_rows: list[tuple[int, ...]], cfg: dict, sms: int) -> int:
    """Row tiles per program that a launch over operands of these (rows, 128-groups) takes; an
    entry (rows, groups, 128) is an operand read in 128-row tiles for itself and its transpose."""
    tiles = sum(-(-shape[0] // (shape[2] if len(shape) > 2 else cfg["BLOCK_R"])) * shape[1] for shape in shape_rows)
    return tiles_per_program(tiles, cfg["MAX_TILES"], sms, cfg["PROGRAMS_PER_SM"])


def sweep(tokens: int, linears: dict[tuple[int, int], int], layers: int, device: torch.device) -> dict:
    rotation = rotation_matrix(random_signs(128, None, device))
    seeds = list(torch.randint(0, 2**62, (4,), device=device).unbind())
    sms = multiprocessors(device)
    rows, alone = [], []
    for (features_in, features_out), count in linears.items():
        ops = _operands(tokens, features_in, features_out, device)
        shapes = [(tokens, features_out // 128), (features_in, features_out // 128),
                  (features_out, tokens // 128), (features_in, tokens // 128)]  # fmt: skip
        for candidate in [*CANDIDATES, None]:
            with _both_passes(candidate) if candidate else contextlib.nullcontext():
                label = _config_cell(candidate) if candidate else _shipped_cell()
                for name, fn in _launch_fns(ops, rotation, seeds).items():
                    if candidate and name != _shipped_launches():
                        continue
                    compiled = compiled_passes(fn, device)
                    _, _, one_read, is_amax = LAUNCHES[name]
                    amax_shapes = shapes if is_amax.count(True) == 1 else shapes[:2]
                    if one_read:
                        amax_shapes = [(*shapes[0], 128), shapes[1], shapes[3]]
                    times = pass_times_us(fn)
                    row = {
                        "in": features_in,
                        "out": features_out,
                        "per_layer": count,
                        "launches": name,
                        "config": label,
                        "amax_tiles": _tiles(amax_shapes, config(PASSES[0], device), sms),
                        "amax_us": sum(t for t, amax in zip(times, is_amax, strict=True) if amax),
                        "quantize_us": sum(t for t, amax in zip(times, is_amax, strict=True) if not amax),
                        "compiled": compiled,
                    }
                    rows.append(row)
                    print({k: v for k, v in row.items() if k != "compiled"}, compiled, flush=True)
        for case, (fn, elements) in _alone(ops, rotation, seeds[0]).items():
            amax_us, quantize_us = pass_times_us(fn)
            alone.append(
                {
                    "in": features_in,
                    "out": features_out,
                    "case": case,
                    "amax_us": amax_us,
                    "quantize_us": quantize_us,
                    "elements": elements,
                }
            )
            print(alone[-1], flush=True)
        del ops
    return {"launches": rows, "alone": alone, "totals": _totals(rows, layers)}


def _totals(rows: list[dict], layers: int) -> list[dict]:
    """Per launch structure and configuration, each pass's time over every linear's backward, in
    ms per step."""
    groups = dict.fromkeys((r["launches"], r["config"]) for r in rows)
    totals = []
    for name, label in groups:
        mine = [r for r in rows if (r["launches"], r["config"]) == (name, label)]
        totals.append(
            {
                "launches": name,
                "config": label,
                "amax_ms": layers * sum(r["per_layer"] * r["amax_us"] for r in mine) / 1e3,
                "quantize_ms": layers * sum(r["per_layer"] * r["quantize_us"] for r in mine) / 1e3,
            }
        )
    return totals


def _config_cell(r: dict) -> str:
    return f"{r['BLOCK_R']} rows, {r['num_warps']} warps, <= {r['MAX_TILES']} tiles"


def _shipped_cell() -> str:
    """The shipped configuration of both passes, as a table cell."""
    return f"shipped: amax {_config_cell(config(PASSES[0]))}; quantize {_config_cell(config(PASSES[1]))}"


def _markdown(results: dict, meta: dict) -> str:
    lines = [*report.markdown_header("MS-EDEN launch shapes", meta)]
    lines += [
        f"{meta['tokens']} tokens, {meta['layers']} layers; linears (in, out) x per layer: {meta['linears']}. "
        "Model totals: each pass summed over the backward of every linear, ms per step. Launches: one "
        "launch per pass over both GEMMs' four operands, the amax launch reading g once for g and g^T "
        "or (g^T read again) once for each; one amax launch over the four, then a quantize launch per "
        "GEMM; or each GEMM's two passes on their own. The candidate configurations (both "
        f"passes alike) are swept for the shipped launches ({_shipped_launches()}); every layout is also "
        "timed with the shipped configuration.",
        "",
        report.markdown_table(
            ["launches", "config", "amax ms", "quantize ms", "both ms"],
            [
                [
                    r["launches"],
                    r["config"],
                    f"{r['amax_ms']:.2f}",
                    f"{r['quantize_ms']:.2f}",
                    f"{r['amax_ms'] + r['quantize_ms']:.2f}",
                ]
                for r in results["totals"]
            ],
        ),
        "",
        "Each linear's backward launches (us, summed per pass); amax tiles: row tiles per program of "
        "the (first) amax launch; registers and programs per SM of each compiled kernel, in launch order.",
        "",
        report.markdown_table(
            ["in, out", "launches", "config", "amax tiles", "amax us", "quantize us", "registers", "programs / SM"],
            [
                [
                    f"{r['in']}, {r['out']}",
                    r["launches"],
                    r["config"],
                    str(r["amax_tiles"]),
                    f"{r['amax_us']:.1f}",
                    f"{r['quantize_us']:.1f}",
                    " / ".join(str(c["registers"]) for c in r["compiled"]),
                    " / ".join(str(c["programs_per_sm"]) for c in r["compiled"]),
                ]
                for r in results["launches"]
            ],
        ),
        "",
        "Each operand alone, shipped configuration: us, and ns per million elements of the operand.",
        "",
        report.markdown_table(
            ["in, out", "operand", "amax us", "quantize us", "quantize us / M elements"],
            [
                [
                    f"{r['in']}, {r['out']}",
                    r["case"],
                    f"{r['amax_us']:.1f}",
                    f"{r['quantize_us']:.1f}",
                    f"{r['quantize_us'] / r['elements'] * 1e6:.1f}",
                ]
                for r in results["alone"]
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


def profile_case(tokens: int, linears: dict[tuple[int, int], int], device: torch.device) -> None:
    """The largest linear's backward MS-EDEN launches, twice, with the shipped configuration: a
    short program for a profiler to attach to (the first round compiles)."""
    features_in, features_out = max(linears, key=lambda shape: shape[0] * shape[1])
    ops = _operands(tokens, features_in, features_out, device)
    rotation = rotation_matrix(random_signs(128, None, device))
    fn = _launch_fns(ops, rotation, list(torch.randint(0, 2**62, (4,), device=device).unbind()))[_shipped_launches()]
    for _ in range(2):
        fn()
    torch.cuda.synchronize()


def _linears(text: str) -> dict[tuple[int, int], int]:
    """``1024x1024:2,2816x1024:1`` -> {(1024, 1024): 2, (2816, 1024): 1}."""
    out = {}
    for item in text.split(","):
        shape, count = item.split(":")
        features_in, features_out = shape.split("x")
        out[(int(features_in), int(features_out))] = int(count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument(
        "--linears",
        type=_linears,
        default=LLAMA_150M_LINEARS,
        help="in x out : count per layer, comma-separated (default: the 156M Llama)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", default="ms-eden-tiles")
    parser.add_argument(
        "--profile-case", action="store_true", help="only launch the largest linear's backward MS-EDEN passes twice"
    )
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    if args.profile_case:
        profile_case(args.tokens, args.linears, device)
        return
    meta = {
        **report.environment(device),
        "tokens": args.tokens,
        "layers": args.layers,
        "linears": {f"{i}x{o}": n for (i, o), n in args.linears.items()},
        "shipped": {name: config(name, device) for name in PASSES},
    }
    results = sweep(args.tokens, args.linears, args.layers, device)
    report.publish(_markdown(results, meta), args.out, args.name, {**meta, **results})


if __name__ == "__main__":
    main()
