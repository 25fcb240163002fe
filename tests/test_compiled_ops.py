"""What a compiled graph holds where the Triton kernels run: AOTAutograd decomposes the
``quartet::linear_triton`` ops into their kernel launches and tensor ops, so that Inductor
launches the kernels from generated code and no Python of ours runs per layer at run time.

The graphs are traced on the CPU (tracing needs no GPU; Triton's analysis of which arguments a
kernel writes is given a Hopper target) and never run here; the GPU suite runs them."""

from __future__ import annotations

import re

import pytest
import torch
import torch._inductor.config
from torch._functorch.aot_autograd import aot_module_simplified
from torch.fx.experimental.proxy_tensor import make_fx

from quartet_bench.models import Llama, LlamaConfig
from quartet_compile import QuartetConfig, backend
from quartet_compile.kernels.configs import config
from quartet_compile.ops import Implementation, quantized_linear, routing

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402

tl = pytest.importorskip("triton.language")


class _Traced(Exception):
    """Stops the compile once the graphs are captured: CPU tensors cannot run CUDA kernels."""


@pytest.fixture
def a_hopper_target(monkeypatch):
    class Target:
        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

    monkeypatch.setattr(driver, "_active", Target())


def _aot_graphs(gm: torch.fx.GraphModule, example_inputs: list) -> list[torch.fx.GraphModule]:
    """The forward graphs AOTAutograd makes of ``gm`` (the backward compiles lazily)."""
    graphs = []

    def capture(graph: torch.fx.GraphModule, example_inputs: list):
        graphs.append(graph)
        return graph.forward

    aot_module_simplified(gm, example_inputs, fw_compiler=capture, bw_compiler=capture)
    return graphs


def _traced_graphs(fn, *args) -> list[torch.fx.GraphModule]:
    """The forward graphs of ``fn(*args)`` as compiled by Dynamo and AOTAutograd."""
    graphs = []

    def dynamo_backend(gm: torch.fx.GraphModule, example_inputs: list):
        graphs.extend(_aot_graphs(gm, example_inputs))
        raise _Traced

    torch._dynamo.reset()
    with pytest.raises(Exception, match="_Traced"):
        torch.compile(fn, backend=dynamo_backend, fullgraph=True)(*args)
    return graphs


def _targets(gm: torch.fx.GraphModule) -> list[str]:
    return [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]


def _launches(gm: torch.fx.GraphModule) -> list[tuple[str, torch.fx.Node]]:
    """The graph's kernel launches, in order: the kernel's name and the launch node."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    return [
        (kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__, n)
        for n in gm.graph.nodes
        if n.op == "call_function" and "triton_kernel_wrapper_functional" in str(n.target)
    ]


def _launched_kernels(gm: torch.fx.GraphModule) -> list[str]:
    return [name for name, _ in _launches(gm)]


def _random_draws(gm: torch.fx.GraphModule) -> list[str]:
    return [t for t in _targets(gm) if "rand" in t]


def _unwritten_buffers(gm: torch.fx.GraphModule) -> list[str]:
    """Buffers the graph allocates and then reads without a kernel launch having written them:
    where PyTorch's analysis of a launch misses one of its writes, the graph reads the empty
    buffer instead of the launch's result (and may drop the launch). A launch may be handed a
    buffer it does not write (an amax pass gets the quantize pass's outputs), but some launch
    must write it, and nothing else may read it."""
    unwritten = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or not str(node.target).startswith("aten.empty"):
            continue
        written = False
        for user in node.users:
            if "triton_kernel_wrapper_functional" not in str(user.target):
                unwritten.append(f"{node.name} read by {user.name}")
                continue
            names = {k for k, v in user.kwargs["kwargs"].items() if v is node}
            written |= bool(names & set(user.kwargs["tensors_to_clone"]))
        if not written:
            unwritten.append(f"{node.name} written by no launch")
    return unwritten


@pytest.mark.parametrize("recipe", ["quartet2", "nvidia"])
def test_the_forward_is_kernel_launches_and_tensor_ops(recipe, a_hopper_target):
    numerics = QuartetConfig(recipe=recipe).numerics.encode()
    x = torch.randn(256, 128, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(384, 128, dtype=torch.bfloat16, requires_grad=True)
    (forward,) = _traced_graphs(lambda x, w: quantized_linear(x, w, numerics=numerics, implementation="triton"), x, w)
    targets = _targets(forward)
    assert not [t for t in targets if "quartet" in t]
    assert "aten.clone.default" not in targets  # the kernels' writes were analysed: inputs are not copied
    kernels = _launched_kernels(forward)
    launches = {"quartet2": 1, "nvidia": 2}[recipe]  # both operands in one launch per pass, 16x16 weight tiles apart
    assert kernels.count("_stats_kernel") == launches and kernels.count("_quantize_kernel") == launches, kernels
    assert targets.count("aten.zeros.default") == 1  # one zeroed statistics buffer for both operands
    assert not _unwritten_buffers(forward)


@pytest.mark.parametrize(("recipe", "quantizer"), [("quartet2", "_ms_eden_kernel"), ("nvidia", "_nvidia_kernel")])
def test_the_backward_is_kernel_launches_with_its_seeds_drawn_in_the_graph(recipe, quantizer, a_hopper_target):
    numerics = QuartetConfig(recipe=recipe).numerics
    x = torch.randn(256, 128, dtype=torch.bfloat16)
    w = torch.randn(384, 128, dtype=torch.bfloat16)
    outputs = torch.ops.quartet.linear(x, w, None, numerics.encode(), Implementation.REFERENCE.value, -1)
    grad = torch.randn(256, 384, dtype=torch.bfloat16)
    saved = (x if numerics.saves_x else None, None, *outputs[1:])

    def backward(grad, *parts):
        dtype = torch.bfloat16
        return torch.ops.quartet.linear_triton_backward(
            grad, *saved[:2], *parts, numerics.encode(), False, dtype, dtype, True, True
        )

    (graph,) = _traced_graphs(backward, grad, *saved[2:])
    targets = _targets(graph)
    assert not [t for t in targets if "quartet" in t]
    assert len(_random_draws(graph)) == 1, targets  # every seed and the rotation's signs in one draw
    kernels = _launched_kernels(graph)
    # MS-EDEN: one amax pass for both GEMMs' operands, a quantize pass per GEMMS operand pairs;
    # nvidia: an amax and a quantize pass per operand.
    passes = {"quartet2": 1 + 2 // config("ms_eden_quantize")["GEMMS"], "nvidia": 6}[recipe]
    assert kernels.count(quantizer) == passes and kernels.count("_rotation_kernel") == 1, kernels
    assert "aten.zeros.default" not in targets  # the rotation's launch zeroes the amax rows
    assert not _unwritten_buffers(graph)


def _launch_inputs(gm: torch.fx.GraphModule, kernel: str, argument: str) -> list[torch.fx.Node]:
    return [n.kwargs["kwargs"][argument] for name, n in _launches(gm) if name == kernel]


def test_an_input_read_by_several_launches_is_realized_once(a_hopper_target):
    """Inductor hands each user-kernel launch its own copy of an input that is still an unfused
    computation (the autocast of ``x``, a pointwise gradient): the forward's operands feed both
    passes, and the gradient every MS-EDEN read of it, through one layout-fixing node each."""
    numerics = QuartetConfig(recipe="quartet2").numerics
    x = torch.randn(256, 128, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(384, 128, dtype=torch.bfloat16, requires_grad=True)

    def layer(x, w):
        return quantized_linear(x * 2, w, numerics=numerics.encode(), implementation="triton")

    (forward,) = _traced_graphs(layer, x, w)
    for operand in ("a", "b"):
        sources = {*_launch_inputs(forward, "_stats_kernel", f"{operand}_ptr"),
                   *_launch_inputs(forward, "_quantize_kernel", f"{operand}_x_ptr")}  # fmt: skip
        assert len(sources) == 1 and "inductor_force_stride_order" in str(next(iter(sources)).target)

    outputs = torch.ops.quartet.linear(
        x.detach(), w.detach(), None, numerics.encode(), Implementation.REFERENCE.value, -1
    )
    saved = (None, None, *outputs[1:])

    def backward(grad, *parts):
        dtype = torch.bfloat16
        return torch.ops.quartet.linear_triton_backward(
            grad * 2, *saved[:2], *parts, numerics.encode(), False, dtype, dtype, True, True
        )

    (graph,) = _traced_graphs(backward, torch.randn(256, 384, dtype=torch.bfloat16), *saved[2:])
    # g, and g^T for the weight gradient: slot a of the amax pass, which reads g once for both
    # (TWIN_ROW), and slots a and c of the quantize pass, which takes both GEMMs.
    sources, twins = [], 0
    for name, launch in _launches(graph):
        if name == "_ms_eden_kernel":
            twin = launch.kwargs["kwargs"].get("TWIN_ROW") is not None
            twins += twin
            sources += [launch.kwargs["kwargs"][f"{slot}_src_ptr"] for slot in ("a" if twin else "ac")]
    roots = {source.args[0] if "permute" in str(source.target) else source for source in sources}
    assert twins == 1 and len(sources) == 3 and len(roots) == 1
    assert "inductor_force_stride_order" in str(next(iter(roots)).target)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("route", ["tma_gemm", "load_gemm"])
def test_the_triton_gemm_output_is_written_by_its_launch(route, out_dtype, a_hopper_target, monkeypatch):
    """The Hopper GEMMs load through device-built TMA descriptors or pointers and store through
    pointers, so that PyTorch sees the output written (it misses stores through descriptors)."""
    from quartet_compile.kernels import gemm

    monkeypatch.setattr(gemm, "multiprocessors", lambda device: 132)
    a, b = torch.randn(512, 256, dtype=torch.bfloat16), torch.randn(384, 256, dtype=torch.bfloat16)
    scale = torch.ones((), dtype=torch.float32)
    fn = getattr(gemm, route)
    traced = make_fx(torch.func.functionalize(lambda a, b, s: fn(a, b, s, s, out_dtype)), tracing_mode="fake")
    graph = traced(a, b, scale)
    assert _launched_kernels(graph) == [f"_{route}_kernel"]
    assert not _unwritten_buffers(graph)


@pytest.mark.parametrize("scratch_safe", [True, False])
def test_a_graph_without_scratch_for_the_tma_gemm_launches_the_pointer_load_gemm(scratch_safe, monkeypatch):
    """An output that fills the device takes the TMA GEMM where the graph's launcher can give it
    its scratch, else the pointer-load GEMM, never cuBLAS's float32 product and second pass."""
    from quartet_compile.kernels import gemm

    monkeypatch.setattr(gemm, "multiprocessors", lambda device: 4)
    monkeypatch.setattr(gemm, "tma_compatible", lambda *args: True)
    monkeypatch.setattr(gemm, "scratch_safe_in_compiled_graphs", lambda: scratch_safe)
    a, b = torch.randn(512, 256, dtype=torch.bfloat16), torch.randn(512, 256, dtype=torch.bfloat16)
    scale = torch.ones((), dtype=torch.float32)
    fn = torch.func.functionalize(lambda a, b, s: gemm.unscaled_gemm(a, b, s, s, torch.bfloat16))
    graph = make_fx(fn, tracing_mode="fake")(a, b, scale)
    assert _launched_kernels(graph) == ["_tma_gemm_kernel" if scratch_safe else "_load_gemm_kernel"]
    assert "aten.mm.default" not in _targets(graph)


@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float32])
def test_the_cublas_epilogue_is_tensor_ops_inductor_can_fuse(out_dtype):
    """In a compiled graph the cuBLAS route scales its float32 product with tensor ops (fused by
    Inductor into the kernel that reads the product next) instead of launching the epilogue
    pass; with a bias the pass stays."""
    from quartet_compile.kernels import gemm

    a, b = torch.randn(64, 32, dtype=torch.bfloat16), torch.randn(48, 32, dtype=torch.bfloat16)
    scale, bias = torch.rand((), dtype=torch.float32), torch.randn(48, dtype=torch.float32)

    def trace(fn, *args):
        return make_fx(torch.func.functionalize(fn), tracing_mode="fake")(*args)

    plain = trace(lambda a, b, s: gemm.cublas_gemm(a, b, s, s, out_dtype), a, b, scale)
    assert _launched_kernels(plain) == [] and "aten.mul.Tensor" in _targets(plain)
    (output,) = [n for n in plain.graph.nodes if n.op == "output"]
    assert output.args[0].meta["val"].dtype == out_dtype
    biased = trace(lambda a, b, s, c: gemm.cublas_gemm(a, b, s, s, out_dtype, c), a, b, scale, bias)
    assert _launched_kernels(biased) == ["_scale_epilogue_kernel"]
    assert not _unwritten_buffers(biased)


def test_the_tma_gemm_stays_out_of_cpp_wrapper_graphs_that_would_overrun_its_scratch(monkeypatch):
    """The TMA GEMM builds its descriptors in Triton's global scratch, one slot per program. A
    C++ wrapper that allocates one slot for the whole grid (torch 2.11's) sends the GEMMs of the
    graphs it compiles to cuBLAS; the Python wrapper, and a C++ wrapper that sizes the scratch by
    the grid, keep the TMA GEMM. What Inductor generates is read from its code for one scratch."""
    from torch._inductor.codegen.cuda.device_op_overrides import CUDADeviceOpOverrides

    from quartet_compile.kernels import gemm

    def generates(size: str):
        return lambda self, idx, workspace, prefix=None: ([f"int64_t scratch_size[] = {{{size}}};"], "scratch")

    verdicts = {}
    for size in ("static_cast<int64_t>(256) * grid_0 * grid_1 * grid_2", "256"):
        monkeypatch.setattr(CUDADeviceOpOverrides, "cpp_scratch", generates(size))
        gemm._cpp_wrapper_scales_scratch.cache_clear()
        for cpp_wrapper in (False, True):
            with torch._inductor.config.patch(cpp_wrapper=cpp_wrapper):
                verdicts[size != "256", cpp_wrapper] = gemm.scratch_safe_in_compiled_graphs()
    monkeypatch.undo()
    gemm._cpp_wrapper_scales_scratch.cache_clear()
    assert verdicts == {(True, False): True, (True, True): True, (False, False): True, (False, True): False}


@pytest.mark.parametrize("fallback_random", [False, True])
def test_a_compiled_model_runs_no_quartet_op_where_the_kernels_run(fallback_random, a_hopper_target, monkeypatch):
    """The pass puts the Triton ops in the graph wherever ``route`` sends a matmul to the
    kernels (stubbed here as if on a GPU), and AOTAutograd leaves no op call of ours. The
    backward's seeds are not drawn in the forward, also where random ops count as side effects
    (``fallback_random``, which keeps an input-free draw in the forward graph too)."""
    monkeypatch.setattr(routing, "_triton_installed", lambda: True)
    cuda_route = routing.Route(Implementation.TRITON, "Triton kernels")
    monkeypatch.setattr("quartet_compile.passes.linear_rewrite.route", lambda *args: cuda_route)
    quartet = backend()
    torch.manual_seed(0)
    model = Llama(LlamaConfig())
    tokens = torch.randint(0, 256, (2, 128))
    graphs = []

    def compile_rewritten(gm, example_inputs):
        quartet.rewrite(gm, example_inputs, model)
        graphs.extend(_aot_graphs(gm, example_inputs))
        raise _Traced

    torch._dynamo.reset()
    with pytest.raises(Exception, match="_Traced"), torch._inductor.config.patch(fallback_random=fallback_random):
        torch.compile(model, backend=compile_rewritten)(tokens)
    (forward,) = graphs
    assert not [t for t in _targets(forward) if "quartet" in t]
    assert _launched_kernels(forward).count("_quantize_kernel") == 14  # x and W of 14 projections, one launch each
    assert not _random_draws(forward)


def test_the_write_analysis_builds_each_kernel_signature_once(a_hopper_target, monkeypatch):
    """Tracing two more layers of the same shapes builds no new Triton IR: PyTorch's analysis
    of which arguments a launch writes reuses the IR built for the first layer."""
    from quartet_compile.kernels import mutation_analysis

    mutation_analysis.reuse_ttir_of_our_kernels()
    generate, built = mutation_analysis._pytorch["generate_ttir"], []
    counting = {**mutation_analysis._pytorch, "generate_ttir": lambda *args: built.append(args[0]) or generate(*args)}
    monkeypatch.setattr(mutation_analysis, "_pytorch", counting)
    monkeypatch.setattr(mutation_analysis, "_ttir", {})
    monkeypatch.setattr(mutation_analysis, "_functions", {})
    numerics = QuartetConfig(recipe="quartet2").numerics.encode()
    x = torch.randn(256, 128, dtype=torch.bfloat16, requires_grad=True)
    w1, w2 = (torch.randn(384, 128, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))

    def two_layers(x, w1, w2):
        y = quantized_linear(x, w1, numerics=numerics, implementation="triton")
        return quantized_linear(x, w2, numerics=numerics, implementation="triton") + y

    _traced_graphs(lambda x, w: quantized_linear(x, w, numerics=numerics, implementation="triton"), x, w1)
    first = len(built)
    _traced_graphs(two_layers, x, w1, w2)
    assert first == len(mutation_analysis._ttir) > 0 and len(built) == first


def test_the_ir_key_separates_what_changes_the_ir(a_hopper_target):
    from quartet_compile.kernels import quantize
    from quartet_compile.kernels.mutation_analysis import _ttir_key

    def key(**changes):
        args = {"stats_ptr": torch.empty(2), "a_ptr": torch.empty(2, dtype=torch.bfloat16), "a_n": 256,
                "a_stats_row": 0, "a_programs": 1, "b_ptr": None, "b_n": 0, "b_stats_row": 0, "TWO": False,
                "BLOCK_SIZE": 1024, **changes}  # fmt: skip
        return _ttir_key(quantize._stats_kernel, args, ({},))

    assert key() == key()
    changes = (key(a_n=4096), key(a_n=1), key(BLOCK_SIZE=2048), key(a_ptr=torch.empty(2, dtype=torch.float16)))
    assert len({key(), *changes}) == 5  # values may be folded into the IR: each one is its own signature
    assert _ttir_key(_multiply_add, {}, ({},)) is None  # not a kernel of this package


@triton.jit
def _multiply_add(a_ptr):
    tl.store(a_ptr, tl.load(a_ptr) * 2)


def _cuda_step(fn, x: torch.Tensor, w: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    x.grad = w.grad = None
    y = fn(x, w)
    y.backward(g)
    return [y.detach().clone(), x.grad.clone(), w.grad.clone()]


def _cuda_layer(recipe: str, tokens: int = 512, n: int = 384, k: int = 256):
    """A quantized linear as the pass emits it on this GPU, its inputs ``x [tokens, k]``,
    ``w [n, k]`` and an output gradient (Dynamo reset, so that earlier tests' shapes do not make
    these symbolic)."""
    numerics = QuartetConfig(recipe=recipe).numerics
    implementation = routing.route(numerics, torch.device("cuda")).implementation.value

    def layer(x, w):
        return quantized_linear(x, w, numerics=numerics.encode(), implementation=implementation)

    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch._dynamo.reset()
    return layer, x, w, torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["quartet2", "nvidia", "fp4-forward"])
@torch._inductor.config.patch(fallback_random=True)  # not monkeypatch: its undo deletes config entries
def test_inductor_launches_compute_what_the_ops_compute(recipe):
    """Bit for bit, with Inductor drawing the seeds through aten (``fallback_random``) so that
    both runs take the same draws from the default generator."""
    layer, x, w, g = _cuda_layer(recipe)
    compiled = torch.compile(layer, backend="inductor", fullgraph=True)
    _cuda_step(compiled, x, w, g)  # compiles
    results = []
    for fn in (layer, compiled):
        torch.manual_seed(3)
        results.append(_cuda_step(fn, x, w, g))
    for eager, inductor in zip(*results, strict=True):
        assert torch.isfinite(eager).all() and torch.equal(eager, inductor)


@pytest.mark.gpu
@torch._inductor.config.patch(fallback_random=True)
def test_the_cpp_wrapper_launches_compute_what_the_python_wrapper_launches():
    """Inductor's C++ wrapper (``cpp_wrapper``) on a layer whose forward and input-gradient GEMMs
    fill the GPU (the TMA GEMM's route in the Python wrapper's graph): bit for bit the Python
    wrapper's results. Where the C++ wrapper would give the TMA GEMM too little scratch (torch
    2.11, where it was an illegal memory access), its graphs launch the pointer-load GEMM, whose
    tiles and reduction order are the TMA GEMM's."""
    from torch._inductor.utils import run_and_get_code

    gemms = ("_tma_gemm_kernel", "_load_gemm_kernel")
    layer, x, w, g = _cuda_layer("quartet2", tokens=4096, n=2048, k=1024)
    results, launched = [], []
    for cpp_wrapper in (False, True):
        torch._dynamo.reset()
        with torch._inductor.config.patch(cpp_wrapper=cpp_wrapper):
            compiled = torch.compile(layer, fullgraph=True)
            _, codes = run_and_get_code(lambda compiled=compiled: _cuda_step(compiled, x, w, g))  # compiles
            defined = "".join(codes)  # the generated code holds the source of each kernel it launches
            launched.append({name for name in gemms if re.search(rf"def {name}(_\d+)?\(", defined)})
            torch.manual_seed(3)
            results.append(_cuda_step(compiled, x, w, g))
    assert launched[0] == {"_tma_gemm_kernel"} and len(launched[1]) == 1, launched
    for python, cpp in zip(*results, strict=True):
        assert torch.isfinite(cpp).all() and torch.equal(python, cpp)


@pytest.mark.gpu
def test_inductor_fuses_the_cublas_epilogue_into_its_neighbours():
    """A layer too small for the TMA GEMM takes cuBLAS for all three GEMMs; the compiled step
    launches no epilogue pass (its scaling runs inside Inductor's kernels) and computes what the
    uncompiled op computes (``test_inductor_launches_compute_what_the_ops_compute``)."""
    from torch._inductor.utils import run_and_get_code

    layer, x, w, _ = _cuda_layer("quartet2")
    compiled = torch.compile(lambda x, w: torch.nn.functional.silu(layer(x, w)).float().square().sum(), fullgraph=True)
    _, codes = run_and_get_code(lambda: compiled(x, w).backward())
    assert len(codes) == 2 and all("extern_kernels.mm" in code for code in codes)
    assert not [code for code in codes if "_scale_epilogue_kernel" in code]


@pytest.mark.gpu
def test_inductor_writes_a_pointwise_gradient_once():
    """The gradient of a quantized layer whose output feeds a SiLU is the SiLU backward, a
    pointwise kernel of Inductor's: it writes that gradient once, not a copy for each of the
    four MS-EDEN passes that read it."""
    from torch._inductor.utils import run_and_get_code

    layer, x, w, _ = _cuda_layer("quartet2")
    compiled = torch.compile(lambda x, w: torch.nn.functional.silu(layer(x, w)).float().square().sum(), fullgraph=True)
    _, (*_, backward) = run_and_get_code(lambda: compiled(x, w).backward())
    sources = [chunk.split("device_str")[0] for chunk in backward.split("async_compile.triton(")[1:]]
    silu = [source for source in sources if "silu" in source.split(",")[0]]
    assert len(silu) == 1, [source.split(",")[0] for source in sources]
    assert silu[0].count("tl.store(") == 1, silu[0]


@pytest.mark.gpu
def test_cuda_graph_replays_of_a_compiled_layer_draw_fresh_randomness():
    layer, x, w, g = _cuda_layer("quartet2")
    compiled = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
    runs = []
    for _ in range(5):
        torch.compiler.cudagraph_mark_step_begin()
        runs.append(_cuda_step(compiled, x, w, g))
    (y3, dx3, dw3), (y4, dx4, dw4) = runs[-2:]
    assert torch.equal(y3, y4)  # the forward rounds to nearest
    for a, b in ((dx3, dx4), (dw3, dw4)):
        assert torch.isfinite(a).all() and torch.isfinite(b).all() and not torch.equal(a, b)
