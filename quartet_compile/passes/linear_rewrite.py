"""Find the matmuls of linear layers in a Dynamo FX graph and rewrite them into
:func:`quartet_compile.ops.quantized_linear`.

A matmul is a linear layer when one operand is a weight (a parameter, see :mod:`.weights`),
possibly through a transpose. Matched forms: ``F.linear``, ``matmul``/``@``/``mm`` with the weight
on the right (``x @ W.T`` and ``x @ W`` with ``W`` stored ``[K, N]``), ``addmm(bias, x, W)``
(GPT-2's ``Conv1D``) and an ``einsum`` that contracts an activation's last dimension with a 2-D
weight. Every other matmul-like op gets a row saying why it stays in high precision: products of
two activations (attention), batched or grouped products with a weight (mixture-of-experts
experts), and ops that hide their projections (``nn.MultiheadAttention``). Every row is a
:class:`MatmulDecision`, which ``explain`` prints and the backend logs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from ..config import QuartetConfig
from ..nvfp4.randomness import DEFAULT_STREAM
from ..ops import quantized_linear, route
from .output_head import OutputHeads
from .projection_groups import fused_groups
from .weights import Weights, _value

_LINEAR = {torch._C._nn.linear}
_MATMUL = {torch.matmul, operator.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.mm}
_MATMUL_METHODS = {"matmul", "mm", "__matmul__"}
_ADDMM = {torch.addmm}
_BATCHED = {torch.bmm, torch.baddbmm, torch.Tensor.bmm, torch.Tensor.baddbmm}
_EINSUM = {torch.einsum, torch.functional.einsum}
# ``W.T`` is ``getattr(W, "T")`` in Dynamo graphs up to torch 2.13 and ``aten.numpy_T`` from 2.14.
_TRANSPOSES = {torch.t, torch.Tensor.t, torch.ops.aten.t, torch.ops.aten.t.default}
_TRANSPOSES |= {torch.ops.aten.numpy_T, torch.ops.aten.numpy_T.default}
_TRANSPOSE_METHODS = {"t"}
_VIEWS = {"view", "reshape", "to", "contiguous", "transpose", "permute", "t", "unsqueeze", "squeeze", "expand"}
_VIEW_FUNCTIONS = {torch.transpose, torch.permute, torch.reshape, torch.t, operator.getitem, getattr}
# Higher-order ops whose body graph runs the operands given after it (activation checkpointing).
_BODY_HOPS = ("tag_activation_checkpoint", "wrap")
_MATMUL_LIKE = re.compile(r"mm|matmul|einsum|linear|multi_head|attention|transformer_encoder")
_NOT_2D = "a weight that is not a 2-D linear layer (batched or grouped, e.g. MoE experts): no NVFP4 route"
_HIDDEN_PROJECTIONS = {
    "multi_head_attention_forward": "nn.MultiheadAttention runs its projections inside "
    "F.multi_head_attention_forward, which the graph does not open",
    "_native_multi_head_attention": "nn.MultiheadAttention's fused inference path runs its projections inside one op",
    "_transformer_encoder_layer_fwd": "nn.TransformerEncoderLayer's fused inference path runs its projections "
    "inside one op",
}


@dataclass(frozen=True)
class MatmulDecision:
    """One row of the report: what happened to one matmul and why."""

    module_path: str
    weight: str
    op: str
    shapes: str
    quantized: bool
    reason: str
    recipe: str
    implementation: str = ""
    """What runs it (:class:`~quartet_compile.ops.Implementation`), for quantized rows."""
    fused_with: tuple[str, ...] = ()
    """The module paths of the other projections it runs with as one GEMM (``fuse_projections``)."""

    @property
    def decision(self) -> str:
        return "quantized" if self.quantized else "kept in BF16"


@dataclass(frozen=True)
class _Linear:
    """A matched linear layer: ``x @ weight^T + bias`` with ``weight`` laid out ``[N, K]``
    after applying ``transpose``."""

    x: fx.Node
    weight: fx.Node
    transpose: bool
    bias: fx.Node | None


def _target_name(node: fx.Node) -> str:
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))


def _resolve(weights: Weights, node: object) -> tuple[fx.Node, bool] | None:
    """``(weight, transpose)`` if ``node`` is a weight ``[K, N]`` (transpose it) or the transpose
    of a weight ``[N, K]``; ``None`` if it is an activation."""
    if weights.is_weight(node):
        return node, True
    if not isinstance(node, fx.Node) or not node.args:
        return None
    base = node.args[0]
    if not weights.is_weight(base):
        return None
    is_t = (node.op == "call_function" and node.target in _TRANSPOSES) or (
        node.op == "call_method" and node.target in _TRANSPOSE_METHODS
    )
    is_attr_t = node.op == "call_function" and node.target is getattr and node.args[1:] in (("T",), ("mT",))
    dims = tuple(a % 2 for a in node.args[1:]) if all(isinstance(a, int) for a in node.args[1:]) else ()
    swaps = dims in ((0, 1), (1, 0))
    is_swap = node.op == "call_method" and node.target in ("transpose", "permute") and swaps
    is_swap |= node.op == "call_function" and node.target in (torch.transpose, torch.permute) and swaps
    return (base, False) if (is_t or is_attr_t or is_swap) else None


def _touched_weight(weights: Weights, node: fx.Node) -> fx.Node | None:
    """A weight (of any rank) that an operand of ``node`` is, or views."""
    frontier = [a for a in (*node.args, *node.kwargs.values()) if isinstance(a, fx.Node)]
    frontier += [a for arg in node.args if isinstance(arg, (list, tuple)) for a in arg if isinstance(a, fx.Node)]
    while frontier:
        current = frontier.pop()
        if weights.is_weight(current, dims=None):
            return current
        viewing = (current.op == "call_method" and current.target in _VIEWS) or (
            current.op == "call_function" and current.target in _VIEW_FUNCTIONS | _TRANSPOSES
        )
        if viewing and current.args and isinstance(current.args[0], fx.Node):
            frontier.append(current.args[0])
    return None


def _is(node: fx.Node, functions: set, methods: set = frozenset()) -> bool:
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods
    )


def _shape(node: object) -> str:
    value = _value(node)
    return "?" if value is None else str(list(value.shape)).replace(" ", "")


def _einsum_linear(node: fx.Node, weights: Weights) -> tuple[_Linear | None, str]:
    """An ``einsum`` of an activation and a 2-D weight that is ``x @ W^T`` or ``x @ W``: the
    activation's last index contracted with the weight, whose other index is the output's last."""
    equation, *operands = node.args
    if not isinstance(equation, str) or len(operands) != 2:
        return None, "einsum that is not one activation times one weight"
    inputs, _, output = equation.replace(" ", "").partition("->")
    terms = inputs.split(",")
    which = [i for i, o in enumerate(operands) if weights.is_weight(o)]
    if len(which) != 1 or not output:
        return None, "einsum that is not one activation times one 2-D weight"
    w_terms, x_terms = terms[which[0]], terms[1 - which[0]]
    x = operands[1 - which[0]]
    if len(w_terms) != 2 or not x_terms or x_terms[-1] not in w_terms or x_terms[-1] in output:
        return None, "einsum that does not contract the activation's last dimension with the weight"
    other = w_terms.replace(x_terms[-1], "", 1)
    if output != x_terms[:-1] + other or other in x_terms:
        return None, "einsum whose output is not the activation's other dimensions then the weight's"
    return _Linear(x, operands[which[0]], w_terms[0] == x_terms[-1], None), ""


def _match(node: fx.Node, weights: Weights) -> tuple[_Linear | None, str, str]:
    """``(match, op name, reason it is not a linear layer)``; an empty op name: not a matmul."""
    if _is(node, _LINEAR):
        x = node.args[0] if node.args else node.kwargs.get("input")
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not weights.is_weight(weight):
            return None, "linear", "weight is not a 2-D parameter"
        return _Linear(x, weight, False, bias), "linear", ""
    if _is(node, _MATMUL, _MATMUL_METHODS) or _is(node, _ADDMM):
        op = "addmm" if _is(node, _ADDMM) else "matmul"
        if op == "addmm":
            bias, a, b = node.args[:3]
            if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
                return None, op, "addmm with alpha/beta other than 1"
            bias_value = _value(bias)
            if bias_value is not None and bias_value.dim() != 1:
                return None, op, "addmm input is not a bias vector"
        else:
            (a, b), bias = node.args[:2], None
        resolved = _resolve(weights, b)
        if resolved is not None:
            a_value = _value(a)
            if a_value is not None and a_value.dim() < 2:
                return None, op, "activation is a vector"
            return _Linear(a, resolved[0], resolved[1], bias), op, ""
        if _resolve(weights, a) is not None:
            return None, op, "weight on the left (W @ x)"
        if _touched_weight(weights, node) is not None:
            return None, op, _NOT_2D
        return None, op, "both operands are activations (attention)"
    if _is(node, _BATCHED, {"bmm", "baddbmm"}):
        if _touched_weight(weights, node) is not None:
            return None, "bmm", _NOT_2D
        return None, "bmm", "batched matmul between activations"
    if _is(node, _EINSUM):
        if _touched_weight(weights, node) is None:
            return None, "einsum", "both operands are activations"
        match, reason = _einsum_linear(node, weights)
        return match, "einsum", reason
    op = _target_name(node)
    if not _MATMUL_LIKE.search(op) or _touched_weight(weights, node) is None:
        return None, "", ""
    if op in _HIDDEN_PROJECTIONS:
        return None, op, _HIDDEN_PROJECTIONS[op]
    return None, op, _NOT_2D


def _decide(
    node: fx.Node, match: _Linear, weights: Weights, heads: OutputHeads | None, config: QuartetConfig
) -> tuple[bool, str, str, str]:
    """``(quantize?, reason, shapes, weight name)`` for a matched linear layer."""
    w = _value(match.weight)
    n, k = (w.shape[1], w.shape[0]) if match.transpose else (w.shape[0], w.shape[1])
    x = _value(match.x)
    shapes = f"x{_shape(match.x)} @ W[{n},{k}]^T" + (" + b" if match.bias is not None else "")
    module = weights.module_path(node)
    weight = weights.name(match.weight, module)
    for pattern in config.keep_bf16:
        if any(name and fnmatch.fnmatchcase(name, pattern) for name in (module, weight)):
            return False, f"matches keep_bf16 pattern {pattern!r}", shapes, weight
    head = heads.reason(node, weights.ids.get(match.weight), n) if heads and config.keep_output_head else None
    if head is not None:
        return False, f"output head, {head} (keep_output_head)", shapes, weight
    if min(n, k) < config.min_features:
        return False, f"K={k}, N={n} below min_features={config.min_features}", shapes, weight
    if x is not None and (not x.is_floating_point() or x.dtype == torch.float64):
        return False, f"activation dtype {x.dtype} is not a training float type", shapes, weight
    multiples = config.numerics.multiples
    notes = [
        f"{d} padded {s}->{-(-s // multiples[d]) * multiples[d]}" for d, s in (("K", k), ("N", n)) if s % multiples[d]
    ]
    # math.prod keeps a dynamic token count symbolic; Size.numel() would specialize it.
    tokens = None if x is None else math.prod(x.shape[:-1])
    if tokens is not None and multiples["T"] > 1:
        if isinstance(tokens, torch.SymInt):
            notes.append(f"T padded at run time to a multiple of {multiples['T']}")
        elif tokens % multiples["T"]:
            notes.append(f"T padded {tokens}->{-(-tokens // multiples['T']) * multiples['T']}")
    return True, "; ".join(notes) or "ok", shapes, weight


def _candidates(gm: fx.GraphModule, weights: Weights) -> Iterator[tuple[fx.Node, _Linear | None, str, str]]:
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        match, op, reason = _match(node, weights)
        if op:
            yield node, match, op, reason


def _rewrite(node: fx.Node, match: _Linear, arguments: dict) -> None:
    graph = node.graph
    with graph.inserting_before(node):
        weight = graph.call_function(torch.t, (match.weight,)) if match.transpose else match.weight
        new = graph.call_function(quantized_linear, (match.x, weight, match.bias), arguments)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


@dataclass(frozen=True)
class _Quantized:
    """A linear layer the pass quantizes, before its rewrite: its row and where it is."""

    row: int
    node: fx.Node
    match: _Linear
    module: str


def _fusable(items: list[_Quantized], position: dict[fx.Node, int]) -> bool:
    """Whether a group of projections can run as one GEMM: one input, weights of one dtype and
    ``K``, biases on all or none, and every operand defined before the first of them runs."""
    x = items[0].match.x
    weights = [_value(i.match.weight) for i in items]
    biases = [i.match.bias for i in items]
    if any(i.match.x is not x for i in items) or any(w is None for w in weights):
        return False
    ks = {w.shape[0] if i.match.transpose else w.shape[1] for i, w in zip(items, weights, strict=True)}
    if len(ks) != 1 or len({w.dtype for w in weights}) != 1 or len({b is None for b in biases}) != 1:
        return False
    first = min(position[i.node] for i in items)
    operands = [x, *(i.match.weight for i in items), *(b for b in biases if b is not None)]
    return all(not isinstance(o, fx.Node) or position[o] < first for o in operands)


def _projection_groups(pending: list[_Quantized]) -> list[list[_Quantized]]:
    """The groups of :mod:`.projection_groups` among the quantized layers that can run as one
    GEMM; a module called more than once in the graph (a reused layer) joins none."""
    if not pending:
        return []
    calls: dict[str, list[_Quantized]] = {}
    for item in pending:
        calls.setdefault(item.module, []).append(item)
    once = {module: items[0] for module, items in calls.items() if len(items) == 1 and module}
    position = {node: i for i, node in enumerate(pending[0].node.graph.nodes)}
    groups = [[once[m] for m in members] for members in fused_groups(list(once))]
    return [items for items in groups if _fusable(items, position)]


def _rewrite_group(items: list[_Quantized], arguments: dict) -> None:
    """One ``quantized_linear`` on the concatenated weights (and biases), its output split back
    into the projections' outputs (views of it)."""
    graph = items[0].node.graph
    first = next(node for node in graph.nodes if any(node is i.node for i in items))
    sizes = [_value(i.match.weight).shape[1 if i.match.transpose else 0] for i in items]
    with graph.inserting_before(first):
        weights = [graph.call_function(torch.t, (i.match.weight,)) if i.match.transpose else i.match.weight
                   for i in items]  # fmt: skip
        weight = graph.call_function(torch.cat, (weights,))
        bias = None
        if items[0].match.bias is not None:
            bias = graph.call_function(torch.cat, ([i.match.bias for i in items],))
        fused = graph.call_function(quantized_linear, (items[0].match.x, weight, bias), arguments)
        parts = graph.call_function(torch.split, (fused, sizes), {"dim": -1})
        outputs = [graph.call_function(operator.getitem, (parts, j)) for j in range(len(items))]
    for item, output in zip(items, outputs, strict=True):
        output.meta = {k: v for k, v in item.node.meta.items() if k not in ("example_value", "val")}
        item.node.replace_all_uses_with(output)
        graph.erase_node(item.node)


def _apply(
    pending: list[_Quantized],
    group_of: dict[int, list[_Quantized]],
    weights: Weights,
    decisions: list[MatmulDecision],
    arguments: dict,
) -> None:
    """The rewrites, in graph order, each matched again first: a layer's input may be an earlier
    layer's output, which that layer's rewrite replaced."""
    done: set[int] = set()
    for item in pending:
        if item.row in done:
            continue
        items = group_of.get(item.row, [item])
        done.update(i.row for i in items)
        fresh = [dataclasses.replace(i, match=_match(i.node, weights)[0]) for i in items]
        options = {**arguments, "implementation": decisions[item.row].implementation}
        if len(fresh) == 1:
            _rewrite(item.node, fresh[0].match, options)
        else:  # the concatenated weight is a new tensor at every call: nothing to cache per parameter
            _rewrite_group(fresh, {**options, "cache_weights": False})


def _bodies(gm: fx.GraphModule, weights: Weights) -> Iterator[tuple[fx.GraphModule, Weights]]:
    """Subgraphs of activation checkpointing (and plain ``wrap``), with the weights they receive."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "__name__", "") not in _BODY_HOPS:
            continue
        body_node, *operands = node.args
        body = getattr(gm, str(body_node.target), None) if isinstance(body_node, fx.Node) else None
        if isinstance(body, fx.GraphModule):
            yield body, weights.of_body(body, operands)


def rewrite_linears(
    gm: fx.GraphModule,
    example_inputs: list,
    config: QuartetConfig,
    *,
    root: nn.Module | None = None,
    rng: int = DEFAULT_STREAM,
    apply: bool = True,
) -> list[MatmulDecision]:
    """Rewrite the linear-layer matmuls of ``gm`` (and of its checkpointed bodies) in place;
    with ``apply=False`` only report what would happen. ``root``: the compiled model, which
    names the weights (see :func:`.weights.compiled_root`); ``rng``: the backward's random
    stream (:func:`quartet_compile.nvfp4.randomness.random_stream`)."""
    weights = Weights.of_graph(gm, example_inputs, root, config.weight_buffers)
    heads = OutputHeads(gm, weights, root)
    return _rewrite_graph(gm, weights, heads, config, rng, apply)


def _rewrite_graph(
    gm: fx.GraphModule, weights: Weights, heads: OutputHeads, config: QuartetConfig, rng: int, apply: bool
) -> list[MatmulDecision]:
    decisions = []
    pending: list[_Quantized] = []
    numerics = config.numerics
    for node, match, op, reason in _candidates(gm, weights):
        module = weights.module_path(node)
        implementation = ""
        if match is None:
            weight_node = _touched_weight(weights, node)
            weight_name = weights.name(weight_node, module) if weight_node is not None else ""
            shapes = " @ ".join(_shape(a) for a in node.args[:3] if isinstance(a, fx.Node))
            quantize = False
        else:
            quantize, reason, shapes, weight_name = _decide(node, match, weights, heads, config)
        if quantize:
            x = _value(match.x)
            chosen = route(numerics, x.device if x is not None else torch.device("cpu"), config.kernel_preference)
            implementation = chosen.implementation.value
            pending.append(_Quantized(len(decisions), node, match, module))
        decisions.append(
            MatmulDecision(module, weight_name, op, shapes, quantize, reason, config.recipe.value, implementation)
        )
    arguments = {"numerics": numerics.encode(), "rng": rng, "cache_weights": config.cache_inference_weights}
    group_of: dict[int, list[_Quantized]] = {}
    for items in _projection_groups(pending) if config.fuse_projections else []:
        modules = [i.module for i in items]
        for item in items:
            others = tuple(m for m in modules if m != item.module)
            row = decisions[item.row]
            names = ", ".join(m.rpartition(".")[2] for m in others)
            fused = f"one GEMM with {names} (fuse_projections)"
            reason = fused if row.reason == "ok" else f"{row.reason}; {fused}"
            decisions[item.row] = dataclasses.replace(row, reason=reason, fused_with=others)
            group_of[item.row] = items
    if apply:
        _apply(pending, group_of, weights, decisions, arguments)
    for body, body_weights in list(_bodies(gm, weights)):
        decisions += _rewrite_graph(body, body_weights, heads, config, rng, apply)
    if apply:
        gm.graph.lint()
        gm.recompile()
    return decisions
