"""Find the matmuls of linear layers in a Dynamo FX graph and rewrite them into
:func:`quartet_compile.ops.quartet_linear_op`.

A matmul is a linear layer when one operand is a weight: a 2-D graph input that is a module
parameter or requires grad (Dynamo lifts parameters to placeholders), possibly through a
transpose. Matched forms: ``F.linear``, ``matmul``/``@``/``mm`` with the weight on the right
(``x @ W.T`` and ``x @ W`` with ``W`` stored ``[K, N]``), and ``addmm(bias, x, W)`` (GPT-2's
``Conv1D``). Matmuls between two activations (attention) stay as they are. Every candidate
gets a :class:`MatmulDecision`, which ``explain`` prints and the backend logs.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..config import QuartetConfig
from ..ops import op_arguments, quartet_linear_op
from ..reference.linear import required_multiples

_LINEAR = {torch._C._nn.linear}
_MATMUL = {torch.matmul, operator.matmul, torch.mm, torch.Tensor.matmul, torch.Tensor.mm}
_MATMUL_METHODS = {"matmul", "mm", "__matmul__"}
_ADDMM = {torch.addmm}
_BATCHED = {torch.bmm, torch.baddbmm, torch.Tensor.bmm}
# ``W.T`` is ``getattr(W, "T")`` in Dynamo graphs up to torch 2.13 and ``aten.numpy_T`` from 2.14.
_TRANSPOSES = {torch.t, torch.Tensor.t, torch.ops.aten.t, torch.ops.aten.t.default}
_TRANSPOSES |= {torch.ops.aten.numpy_T, torch.ops.aten.numpy_T.default}
_TRANSPOSE_METHODS = {"t"}
# Higher-order ops whose body graph runs the operands given after it (activation checkpointing).
_BODY_HOPS = ("tag_activation_checkpoint", "wrap")


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


def _path_from_source(name: str) -> str:
    """``L['self']._modules['layers']._modules['0']._parameters['weight']`` -> ``layers.0.weight``.

    The root is the compiled frame's local holding the model: ``L['self']``, or ``L['args'][0]``
    when ``forward`` is wrapped by a decorator taking ``*args`` (``transformers`` 5.2x models)."""
    name = re.sub(r"^L\['[^']*'\](?:\[\d+\])*", "", name)
    name = re.sub(r"\._(?:modules|parameters|buffers)\['([^']*)'\]", r".\1", name)
    name = re.sub(r"\[(\d+)\]|\['([^']*)'\]", lambda m: "." + (m.group(1) or m.group(2)), name)
    return name.lstrip(".")


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    return _path_from_source(path)


def _value(node: object):
    return node.meta.get("example_value", node.meta.get("val")) if isinstance(node, fx.Node) else None


class _Weights:
    """Which nodes of a graph are weights (``node -> (is_weight, name)``)."""

    def __init__(self, known: dict[fx.Node, tuple[bool, str]]):
        self.known = known

    @classmethod
    def of_graph(cls, gm: fx.GraphModule, example_inputs: list) -> _Weights:
        """Placeholders are weights when their example input is a parameter or requires grad."""
        known = {}
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, value in zip(placeholders, example_inputs, strict=False):
            is_weight = isinstance(value, torch.Tensor) and (
                isinstance(value, torch.nn.Parameter) or value.requires_grad
            )
            source = getattr(getattr(node.meta.get("grapharg"), "source", None), "name", None)
            known[node] = (is_weight, _path_from_source(source) if source else node.name)
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                value = getattr(gm, str(node.target), None)
                known[node] = (isinstance(value, torch.nn.Parameter), str(node.target))
        return cls(known)

    def of_body(self, body: fx.GraphModule, operands: list) -> _Weights:
        """A subgraph's placeholders are weights when the operands passed to it are."""
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        info = [(self.is_weight(a), self.name(a)) for a in operands]
        return _Weights(dict(zip(placeholders, info, strict=False)))

    def name(self, node: object) -> str:
        return self.known.get(node, (False, ""))[1] if isinstance(node, fx.Node) else ""

    def is_weight(self, node: object) -> bool:
        value = _value(node)
        return (
            isinstance(node, fx.Node)
            and self.known.get(node, (False, ""))[0]
            and (value is None or (value.dim() == 2 and value.is_floating_point()))
        )

    def resolve(self, node: object) -> tuple[fx.Node, bool] | None:
        """``(weight, transpose)`` if ``node`` is a weight ``[K, N]`` (transpose it) or the
        transpose of a weight ``[N, K]``; ``None`` if it is an activation."""
        if self.is_weight(node):
            return node, True
        if not isinstance(node, fx.Node) or not node.args:
            return None
        base = node.args[0]
        if not self.is_weight(base):
            return None
        is_t = (node.op == "call_function" and node.target in _TRANSPOSES) or (
            node.op == "call_method" and node.target in _TRANSPOSE_METHODS
        )
        is_attr_t = node.op == "call_function" and node.target is getattr and node.args[1:] in (("T",), ("mT",))
        dims = tuple(a % 2 for a in node.args[1:]) if all(isinstance(a, int) for a in node.args[1:]) else ()
        is_swap = node.op == "call_method" and node.target in ("transpose", "permute") and dims in ((0, 1), (1, 0))
        is_swap |= (
            node.op == "call_function"
            and node.target in (torch.transpose, torch.permute)
            and dims
            in (
                (0, 1),
                (1, 0),
            )
        )
        return (base, False) if (is_t or is_attr_t or is_swap) else None


def _is(node: fx.Node, functions: set, methods: set = frozenset()) -> bool:
    return (node.op == "call_function" and node.target in functions) or (
        node.op == "call_method" and node.target in methods
    )


def _shape(node: object) -> str:
    value = _value(node)
    return "?" if value is None else str(list(value.shape)).replace(" ", "")


def _match(node: fx.Node, weights: _Weights) -> tuple[_Linear | None, str, str]:
    """``(match, op name, reason it is not a linear layer)``."""
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
        resolved = weights.resolve(b)
        if resolved is not None:
            a_value = _value(a)
            if a_value is not None and a_value.dim() < 2:
                return None, op, "activation is a vector"
            return _Linear(a, resolved[0], resolved[1], bias), op, ""
        if weights.resolve(a) is not None:
            return None, op, "weight on the left (W @ x)"
        return None, op, "both operands are activations (attention)"
    if _is(node, _BATCHED, {"bmm"}):
        return None, "bmm", "batched matmul between activations"
    return None, "", ""


def _decide(node: fx.Node, match: _Linear, weights: _Weights, config: QuartetConfig) -> tuple[bool, str, str]:
    """``(quantize?, reason, shapes)`` for a matched linear layer."""
    w = _value(match.weight)
    n, k = (w.shape[1], w.shape[0]) if match.transpose else (w.shape[0], w.shape[1])
    x = _value(match.x)
    shapes = f"x{_shape(match.x)} @ W[{n},{k}]^T" + (" + b" if match.bias is not None else "")
    module, weight = _module_path(node), weights.name(match.weight)
    for pattern in config.keep_bf16:
        if fnmatch.fnmatchcase(module, pattern) or fnmatch.fnmatchcase(weight, pattern):
            return False, f"matches keep_bf16 pattern {pattern!r}", shapes
    if min(n, k) < config.min_features:
        return False, f"K={k}, N={n} below min_features={config.min_features}", shapes
    if x is not None and (not x.is_floating_point() or x.dtype == torch.float64):
        return False, f"activation dtype {x.dtype} is not a training float type", shapes
    multiples = required_multiples(config)
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
    return True, "; ".join(notes) or "ok", shapes


def _candidates(gm: fx.GraphModule, weights: _Weights) -> Iterator[tuple[fx.Node, _Linear | None, str, str]]:
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        match, op, reason = _match(node, weights)
        if op:
            yield node, match, op, reason


def _rewrite(node: fx.Node, match: _Linear, config: QuartetConfig) -> None:
    graph = node.graph
    with graph.inserting_before(node):
        weight = graph.call_function(torch.t, (match.weight,)) if match.transpose else match.weight
        new = graph.call_function(quartet_linear_op, (match.x, weight, match.bias), op_arguments(config))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    graph.erase_node(node)


def _bodies(gm: fx.GraphModule, weights: _Weights) -> Iterator[tuple[fx.GraphModule, _Weights]]:
    """Subgraphs of activation checkpointing (and plain ``wrap``), with the weights they receive."""
    for node in gm.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "__name__", "") not in _BODY_HOPS:
            continue
        body_node, *operands = node.args
        body = getattr(gm, str(body_node.target), None) if isinstance(body_node, fx.Node) else None
        if isinstance(body, fx.GraphModule):
            yield body, weights.of_body(body, operands)


def rewrite_linears(
    gm: fx.GraphModule, example_inputs: list, config: QuartetConfig, *, apply: bool = True
) -> list[MatmulDecision]:
    """Rewrite the linear-layer matmuls of ``gm`` (and of its checkpointed bodies) in place;
    with ``apply=False`` only report what would happen."""
    return _rewrite_graph(gm, _Weights.of_graph(gm, example_inputs), config, apply)


def _rewrite_graph(gm: fx.GraphModule, weights: _Weights, config: QuartetConfig, apply: bool) -> list[MatmulDecision]:
    decisions = []
    for node, match, op, reason in _candidates(gm, weights):
        weight_name = weights.name(match.weight) if match else ""
        if match is None:
            shapes = " @ ".join(_shape(a) for a in node.args[:2] if isinstance(a, fx.Node))
            quantize = False
        else:
            quantize, reason, shapes = _decide(node, match, weights, config)
        decisions.append(
            MatmulDecision(_module_path(node), weight_name, op, shapes, quantize, reason, config.recipe.value)
        )
        if quantize and apply:
            _rewrite(node, match, config)
    for body, body_weights in list(_bodies(gm, weights)):
        decisions += _rewrite_graph(body, body_weights, config, apply)
    if apply:
        gm.graph.lint()
        gm.recompile()
    return decisions
