"""What decides a quantizer's occupancy, read without a GPU: each pass compiled for a GPU target
with the installed Triton (ptxas included), and its registers, spills, shared memory, machine
instructions and the programs of it one SM holds, read from the cubin. Register counts move
between Triton versions (the MS-EDEN pair quantize pass with four row tiles takes 128 registers
with one and 133 with another, two programs per Hopper SM or one), so this is the first thing
to read for a new Triton or a kernel change, before device time is spent timing it.

    python -m quartet_bench.studies.kernel_resources --out bench/results

The kernels are compiled close to how the launches of a 156M step specialize them: shipped
launch configuration, exact-rounding options, pointers and shapes divisible by 16, unit strides
as constants (program counts and statistics rows stay unspecialized, so a count may differ from
the launched kernel's by a few registers). The launch signatures are also what the CPU tests
compile (``tests/test_kernels_cpu.py``). For another Triton than the installed one, install it
beside (``pip install --target DIR --no-deps triton==X``) and run with ``PYTHONPATH=DIR``.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from quartet_compile.kernels import ms_eden, quantize
from quartet_compile.kernels.configs import config

from .. import report
from ..arguments import HelpFormatter
from .ms_eden_tiles import HOPPER_SM, programs_per_sm


def compile_kernel(
    kernel, signature: dict[str, str], constexprs: dict, arch: int, aligned: tuple[str, ...] = (), **options
):
    """``kernel`` compiled for CUDA compute capability ``arch``; ``aligned`` names the arguments a
    launch would mark divisible by 16 (pointers and shapes that are)."""
    attrs = {(kernel.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    full = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    source = ASTSource(fn=kernel, signature=full, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
"""Triton's bundled copy of CUDA's cuobjdump, which reads a cubin's resources and machine code."""


def _cuobjdump(cubin: bytes, flag: str) -> str:
    if not CUOBJDUMP.exists():
        raise FileNotFoundError(f"Triton's bundled cuobjdump is not installed ({CUOBJDUMP})")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([str(CUOBJDUMP), flag, str(path)], capture_output=True, text=True, check=True).stdout


def cubin_resources(compiled) -> dict[str, int]:
    """Registers, stack and local (spilled) bytes per thread of the kernel, from its cubin."""
    text = _cuobjdump(compiled.asm["cubin"], "-res-usage")
    return {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", text)}


def sass(compiled) -> list[str]:
    """The kernel's machine instructions, without addresses (Triton's bundled cuobjdump)."""
    text = _cuobjdump(compiled.asm["cubin"], "-sass")
    return [re.sub(r"^\s*/\*[0-9a-f]+\*/\s*", "", line).split(";")[0] for line in text.splitlines()
            if re.match(r"^\s*/\*[0-9a-f]{4,}\*/", line)]  # fmt: skip


QUANTIZE_SIGNATURE = {
    "x_ptr": "*bf16",
    "rows": "i32",
    "cols": "i32",
    "stride_r": "i32",
    "stride_c": "i32",
    "stats_ptr": "*fp32",
    "stats_row": "i32",
    "codes_ptr": "*u8",
    "scales_ptr": "*u8",
    "deq_ptr": "*bf16",
    "tensor_scale_ptr": "*fp32",
    "value_max": "fp32",
    "value_max_times_scale_max": "fp32",
    "alt_factor": "fp32",
}
"""One operand's arguments of ``quantize._quantize_kernel`` and the ones its slots share."""

QUANTIZE_SHARED = ("stats_ptr", "value_max", "value_max_times_scale_max", "alt_factor")

MS_EDEN_SIGNATURE = {
    "src_ptr": "*bf16",
    "src_scales_ptr": "*u8",
    "src_tensor_scale_ptr": "*fp32",
    "rotation_ptr": "*bf16",
    "stride_rot_k": "i32",
    "stride_rot_n": "i32",
    "rows": "i32",
    "cols": "i32",
    "stride_r": "i32",
    "stride_c": "i32",
    "stats_ptr": "*fp32",
    "stats_row": "i32",
    "seed_ptr": "*i64",
    "codes_ptr": "*u8",
    "scales_ptr": "*u8",
    "deq_ptr": "*bf16",
    "tensor_scale_ptr": "*fp32",
    "rotated_ptr": "*fp32",
    "uniforms_ptr": "*fp32",
    "value_max": "fp32",
    "value_max_times_scale_max": "fp32",
}
"""One operand's arguments of ``ms_eden._ms_eden_kernel`` (also the ``nvidia`` kernel's, which
takes one operand) and the ones its slots share."""

MS_EDEN_SHARED = (
    "rotation_ptr",
    "stride_rot_k",
    "stride_rot_n",
    "stats_ptr",
    "stats_row",
    "rotated_ptr",
    "uniforms_ptr",
    "value_max",
    "value_max_times_scale_max",
)


def slot_launch(
    kernel, signature: dict, shared: tuple, slots: list[dict | None], boundary: str, constexprs: dict
) -> tuple:
    """Signature and constexprs of a kernel that takes its operands in slots ``a``, ``b``, ...:
    ``signature`` lists one operand's arguments and the ``shared`` ones, ``slots`` each slot's
    constexprs (``None``: a slot the launch leaves empty; a ``PACKED`` source is uint8), and
    ``boundary`` names the program count that follows every slot but the last."""
    launch_signature = {k: signature[k] for k in shared}
    launch_constexprs = dict(constexprs)
    first = slots[0]
    for i, slot in enumerate(slots):
        prefix = "abcd"[i]
        for k in (k for k in signature if k not in shared):
            if slot is None:
                launch_constexprs[f"{prefix}_{k}"] = None
            else:
                packed_source = k in ("src_ptr", "x_ptr") and slot.get("PACKED")
                launch_signature[f"{prefix}_{k}"] = "*u8" if packed_source else signature[k]
        if i < len(slots) - 1:
            launch_signature[f"{prefix}_{boundary}"] = "i32"
        launch_constexprs.update({f"{prefix.upper()}_{k}": v for k, v in (slot or first).items()})
    return kernel, launch_signature, launch_constexprs


def quantize_launch(two: bool, **constexprs) -> tuple:
    """``_quantize_kernel`` writing codes and the bf16 operand, for one operand or two."""
    slot = {"STORE_CODES": True, "STORE_DEQ": True}
    return slot_launch(quantize._quantize_kernel, QUANTIZE_SIGNATURE, QUANTIZE_SHARED, [slot, slot if two else None],
                       "programs", {"TWO": two, **constexprs})  # fmt: skip


def ms_eden_launch(*slots: dict, amax_pass: bool = False, tiles: int | None = None, twin: bool = False) -> tuple:
    """``_ms_eden_kernel``'s quantize (or amax) pass over one to four operands in one launch,
    each given as its slot's ``PACKED``, ``STORE_CODES`` and ``STORE_DEQ``; the shipped row tile,
    and ``tiles`` row tiles per program (the shipped most by default); with ``twin`` (an amax
    pass) the first slot also takes its transpose's amax, as the backward's amax launch does."""
    shipped = config("ms_eden_amax" if amax_pass else "ms_eden_quantize")
    constexprs = {"AMAX_PASS": amax_pass, "SLOTS": len(slots), "EMULATED": False, "DEBUG": False,
                  "BLOCK_R": shipped["BLOCK_R"], "TILES": tiles or shipped["MAX_TILES"],
                  "TWIN_ROW": len(slots) if twin else None}  # fmt: skip
    filled = [{**slot, "SPLITS": 1, "ROW": i} for i, slot in enumerate(slots)]
    filled += [None] * (ms_eden.MAX_SLOTS - len(slots))
    return slot_launch(ms_eden._ms_eden_kernel, MS_EDEN_SIGNATURE, MS_EDEN_SHARED, filled, "end", constexprs)


GRADIENT = {"PACKED": False, "STORE_CODES": False, "STORE_DEQ": True}
SAVED = {"PACKED": True, "STORE_CODES": False, "STORE_DEQ": True}
"""The Hopper backward's two kinds of MS-EDEN operand: the bf16 gradient and a saved FP4 tensor."""

MS_EDEN_OPERANDS = {
    "g (dgrad)": ((GRADIENT,), ("a_stride_c",)),
    "g^T (wgrad, strided)": ((GRADIENT,), ("a_stride_r",)),
    "saved FP4": ((SAVED,), ()),
    "g + saved W^T (dgrad pair)": ((GRADIENT, SAVED), ("a_stride_c",)),
    "g^T + saved x^T (wgrad pair)": ((GRADIENT, SAVED), ("a_stride_r",)),
    "both pairs": ((GRADIENT, SAVED, GRADIENT, SAVED), ("a_stride_c", "c_stride_r")),
}
"""Operand layouts of the backward's MS-EDEN launches: slots, and the strides that are 1 (a
constant in the compiled kernel, as launches specialize it). The backward launches the quantize
pass over both pairs; the single operands and pairs show what each one adds."""

MS_EDEN_TWIN_OPERANDS = {
    "g and g^T from one read": ((GRADIENT,), ("a_stride_c",)),
    "g and g^T from one read + saved W^T, x^T": ((GRADIENT, SAVED, SAVED), ("a_stride_c",)),
}
"""The amax pass's layouts in which the first slot reads ``g`` once for itself and ``g^T``; the
backward launches the second."""


def _specialized(
    signature: dict, constexprs: dict, unit_strides: tuple[str, ...]
) -> tuple[dict, dict, tuple[str, ...]]:
    """As a launch specializes the arguments: the dense slots' unit strides and the rotation's
    row stride are constants, pointers and the other shapes divisible by 16 (a seed is a view
    at an 8-byte offset)."""
    constants = {name: 1 for name in ("stride_rot_k", *unit_strides) if name in signature}
    signature = {k: v for k, v in signature.items() if k not in constants}
    shapes = re.compile(r"(^|_)(rows|cols|stride_r|stride_c|stride_rot_n)$")
    aligned = tuple(k for k, v in signature.items() if (v.startswith("*") and "seed" not in k) or shapes.search(k))
    return signature, {**constexprs, **constants}, aligned


def _row(name: str, launch: tuple, unit_strides: tuple[str, ...], arch: int, warps: int) -> dict[str, Any]:
    """``launch`` (kernel, signature, constexprs) specialized and compiled as the shipped launch
    compiles it, and what its cubin holds."""
    kernel, signature, constexprs = launch
    signature, constexprs, aligned = _specialized(signature, constexprs, unit_strides)
    compiled = compile_kernel(kernel, signature, constexprs, arch, aligned, num_warps=warps, **quantize.EXACT)
    resources = cubin_resources(compiled)
    shared = compiled.metadata.shared
    return {
        "kernel": name,
        "registers": resources["REG"],
        "spilled_bytes": resources.get("LOCAL", 0),
        "shared_bytes": shared,
        "instructions": len(sass(compiled)),
        "programs_per_sm": programs_per_sm(resources["REG"], shared, warps) if arch == 90 else None,
    }


def measure(
    arch: int,
    tiles: tuple[int, ...] = (1, 2, 4),
    operands: dict = MS_EDEN_OPERANDS,
    twin_operands: dict = MS_EDEN_TWIN_OPERANDS,
) -> list[dict[str, Any]]:
    """One row per compiled kernel: both MS-EDEN passes for every operand layout and row-tile
    count (the amax pass also for the layouts that read ``g`` once for ``g^T``), then the forward
    quantize pass (RTN and 4/6, both operands in one launch)."""
    rows = []
    for amax_pass in (True, False):
        warps = config("ms_eden_amax" if amax_pass else "ms_eden_quantize")["num_warps"]
        layouts = [(name, layout, False) for name, layout in operands.items()]
        if amax_pass:
            layouts += [(name, layout, True) for name, layout in twin_operands.items()]
        for name, (slots, unit_strides), twin in layouts:
            for count in tiles:
                launch = ms_eden_launch(*slots, amax_pass=amax_pass, tiles=count, twin=twin)
                label = f"MS-EDEN {'amax' if amax_pass else 'quantize'}: {name}, {count} tile{'s' * (count > 1)}"
                rows.append(_row(label, launch, unit_strides, arch, warps))
    shipped = config("quantize")
    block, warps = {k: shipped[k] for k in ("BLOCK_R", "BLOCK_C")}, shipped["num_warps"]
    for label, four_over_six in (("RTN", False), ("4/6", True)):
        launch = quantize_launch(True, FOUR_OVER_SIX=four_over_six, TILE_2D=False, **block)
        rows.append(_row(f"forward quantize {label}: x + W", launch, ("a_stride_c", "b_stride_c"), arch, warps))
    return rows


def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = report.markdown_header("Quantizer kernels: registers, shared memory and occupancy", meta)
    lines.append(
        f"Compiled for sm_{meta['arch']} with Triton {meta['triton']}, no GPU; programs per SM for a Hopper "
        f"SM ({HOPPER_SM['registers']} registers, {HOPPER_SM['shared']} bytes of shared memory).\n"
    )
    header = ["kernel", "registers", "spilled bytes", "shared KB", "instructions", "programs / SM"]
    table = [
        [r["kernel"], str(r["registers"]), str(r["spilled_bytes"]), f"{r['shared_bytes'] / 1024:.0f}",
         str(r["instructions"]), "-" if r["programs_per_sm"] is None else str(r["programs_per_sm"])]
        for r in rows
    ]  # fmt: skip
    return "\n".join([*lines, report.markdown_table(header, table), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability to compile for (90: Hopper)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--name", help="result file stem (default: kernel-resources-sm{arch}-triton{major}{minor})")
    args = parser.parse_args()
    meta = {
        **report.environment(torch.device("cpu")),
        "device": f"none (compiled for sm_{args.arch})",
        "arch": args.arch,
        "triton": triton.__version__,
    }
    rows = measure(args.arch)
    stem = args.name or f"kernel-resources-sm{args.arch}-triton{''.join(triton.__version__.split('.')[:2])}"
    report.publish(_markdown(rows, meta), args.out, stem, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
