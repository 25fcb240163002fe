"""Host-time benchmark (CUDA): what a quantized linear layer costs the CPU, measured where device
work is negligible, with each design choice A/B-tested in the same process.

    python bench/host_overhead.py [--out bench/results]

A training step whose kernels are short is bound by the host: the 1B model in
``bench/results/speed-1b.md`` is. Rows (median over rounds of back-to-back calls, each round
timed with ``perf_counter`` between two ``torch.cuda.synchronize``; rounds of the compared
variants alternate, as the host's speed drifts by tens of percent between runs):

* launch path: the same calls with kernels launched through Triton's ``kernel[grid]`` and
  through ``kernels/launch.py``'s cached launcher (what ships);
* op definition: ``quartet::linear`` (a ``torch.library.Library`` op, what ships) against the
  same function registered with ``torch.library.custom_op``;
* layer: one linear forward+backward at T = K = N = 128, bf16 ``F.linear`` as the baseline;
* step: a compiled 4-layer Llama (dim 256, 28 quantized linears) on 128 tokens, Inductor bf16
  as the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from kernels import layer_step

from quartet_compile import backend
from quartet_compile import ops as ops_module
from quartet_compile.bench.report import environment
from quartet_compile.config import QuartetConfig
from quartet_compile.kernels import gemm as gemm_module
from quartet_compile.kernels import ms_eden as ms_eden_module
from quartet_compile.kernels import quantize as quantize_module
from quartet_compile.kernels.linear import linear_backward, linear_forward
from quartet_compile.models import Llama, LlamaConfig
from quartet_compile.ops import op_arguments, quartet_linear_op

STEP_MODEL = LlamaConfig(dim=256, n_layers=4, n_heads=4, ffn_dim=768, max_seq_len=256)
KERNEL_MODULES = (quantize_module, ms_eden_module, gemm_module)


def interleaved_us(variants: dict[str, Callable[[], object]], calls: int = 100, rounds: int = 9) -> dict[str, float]:
    """Median over ``rounds`` of each variant's wall time per call, issued back to back; the
    rounds alternate between variants so that drift in the host's speed hits them alike. A
    variant is a function returning the context to run in and the callable to time."""
    for make in variants.values():
        context, fn = make()
        with context:
            for _ in range(10):
                fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, make in variants.items():
            context, fn = make()
            with context:
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(calls):
                    fn()
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


@contextmanager
def jit_launches() -> Iterator[None]:
    """Every kernel launched through ``kernel[grid](...)``, as before the cached launcher."""
    shipped = [module.launch for module in KERNEL_MODULES]
    for module in KERNEL_MODULES:
        module.launch = lambda kernel, grid, *args, **options: kernel[grid](*args, **options)
    try:
        yield
    finally:
        for module, launch in zip(KERNEL_MODULES, shipped, strict=True):
            module.launch = launch


def _custom_op_twin() -> Callable:
    """``quartet::linear``'s implementation and fake registered through ``custom_op``."""
    twin = torch.library.custom_op("quartet_host_bench::linear", mutates_args=())(ops_module.linear)
    twin.register_fake(ops_module._linear_fake)
    return twin


def _step(compile_backend) -> Callable[[], None]:
    torch.manual_seed(0)
    model = Llama(STEP_MODEL).cuda()
    tokens = torch.randint(0, STEP_MODEL.vocab_size, (1, 129), device="cuda")
    loss_fn = torch.compile(model.loss, backend=compile_backend)

    def step() -> None:
        with torch.autocast("cuda", torch.bfloat16):
            loss = loss_fn(tokens)
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def _launch_row(name: str, fn: Callable[[], object], calls: int = 100, **baselines: Callable[[], object]) -> dict:
    """``fn`` with Triton's launch path and with the cached launcher, and any baselines."""
    variants = {
        "jit_launch_us": lambda: (jit_launches(), fn),
        "cached_launch_us": lambda: (nullcontext(), fn),
        **{f"{label}_us": (lambda f=f: (nullcontext(), f)) for label, f in baselines.items()},
    }
    row = {"row": name, **interleaved_us(variants, calls)}
    row["ratio"] = row["cached_launch_us"] / row["jit_launch_us"]
    return row


def measure() -> dict:
    config = QuartetConfig(recipe="quartet2")
    kwargs = op_arguments(config)
    x = torch.randn(128, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(128, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(128, 128, device="cuda", dtype=torch.bfloat16)
    _, saved = linear_forward(x.detach(), w.detach(), None, config)

    rows = [
        _launch_row(
            "kernels forward (2 quantizers + GEMM)",
            lambda: linear_forward(x.detach(), w.detach(), None, config),
        ),
        _launch_row(
            "kernels backward (rotation + 4 MS-EDEN + 2 GEMMs)",
            lambda: linear_backward(g, saved, config, dtypes=(torch.bfloat16,) * 2, needs=(True, True), source=None),
        ),
        _launch_row(
            "quartet2 linear fwd+bwd (ops, eager)",
            layer_step(lambda a, b: quartet_linear_op(a, b, **kwargs), x, w, g),
            bf16=layer_step(F.linear, x, w, g),
        ),
        _launch_row(
            "compiled step, 28 quantized linears",
            _step(backend(recipe="quartet2")),
            calls=20,
            inductor_bf16=_step("inductor"),
        ),
    ]
    op_args = (x.detach(), w.detach(), None, kwargs["recipe"], kwargs["four_over_six"], kwargs["rng"])
    twin = _custom_op_twin()
    calls = {
        "custom_op_us": lambda: twin(*op_args),
        "library_op_us": lambda: torch.ops.quartet.linear(*op_args),
        "function_us": lambda: ops_module.linear(*op_args),
    }
    op_row = interleaved_us({name: (lambda fn=fn: (nullcontext(), fn)) for name, fn in calls.items()})
    op_row["ratio"] = op_row["library_op_us"] / op_row["custom_op_us"]
    return {"launch": rows, "op": op_row}


def markdown(results: dict) -> str:
    lines = [
        f"# Host time on {results['device']}",
        "",
        f"`{results['command']}`; versions: {results['versions']}",
        "",
        "Wall time per call where device work is negligible (T = K = N = 128; the step: a 4-layer "
        "dim-256 Llama on 128 tokens), median of 9 interleaved rounds.",
        "",
        "| row | Triton `kernel[grid]` us | cached launcher us | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['row']} | {r['jit_launch_us']:.1f} | {r['cached_launch_us']:.1f} | {r['ratio']:.2f} |"
        for r in results["launch"]
    ]
    op, layer, step = results["op"], results["launch"][-2], results["launch"][-1]
    lines += [
        "",
        f"Baselines in the same rounds: bf16 `F.linear` fwd+bwd {layer['bf16_us']:.1f} us (quartet2: "
        f"{layer['cached_launch_us'] / layer['bf16_us']:.1f}x); Inductor bf16 step {step['inductor_bf16_us']:.1f} us "
        f"(quartet2: {step['cached_launch_us'] / step['inductor_bf16_us']:.2f}x).",
        "",
        "| op definition | us per call |",
        "| --- | ---: |",
        f"| `torch.library.custom_op` | {op['custom_op_us']:.1f} |",
        f"| `torch.library.Library` (shipped) | {op['library_op_us']:.1f} |",
        f"| the Python function, no dispatch | {op['function_us']:.1f} |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    results = {**environment(torch.device("cuda")), **measure()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "host-overhead.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "host-overhead.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
