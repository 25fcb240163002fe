"""Which inputs of a Dynamo graph are weights, and what they are called in the model the user
compiled.

Only parameters are weights (and buffers named by ``weight_buffers``): a 2-D input that merely
requires grad is an activation, whatever matmul it feeds. Names come from the identity of the
parameter in ``named_parameters()`` of the compiled model, not from Dynamo's sources: a source is
relative to the frame being compiled, which after a graph break is a submodule's ``forward`` or a
resume function holding the module in a stack slot (``L['___stack0']``).
"""

from __future__ import annotations

import fnmatch
import re
import sys
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

_LOCAL = re.compile(r"^(?:L|G)\['[^']*'\](?:\[\d+\])*")
_TEMPORARY = "L['___"
"""Dynamo's own locals (stack slots of resume functions): a path below one names nothing."""


def compiled_root() -> nn.Module | None:
    """The model whose ``torch.compile`` is compiling the current frame, from the Python stack of
    a backend call: the innermost ``OptimizedModule`` (``torch.compile(model)``) or module with a
    compiled call (``model.compile()``); ``None`` for a compiled function."""
    from torch._dynamo.eval_frame import OptimizedModule

    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, OptimizedModule):
            return owner._orig_mod
        if isinstance(owner, nn.Module) and getattr(owner, "_compiled_call_impl", None) is not None:
            return owner
        frame = frame.f_back
    return None


def split_source(name: str) -> tuple[str, str]:
    """``L['self']._modules['layers']._modules['0']._parameters['w']`` -> ``("L['self']",
    "layers.0.w")``: the frame local a source starts from and the attribute path below it."""
    match = _LOCAL.match(name)
    local = match.group(0) if match else ""
    path = re.sub(r"\._(?:modules|parameters|buffers)\['([^']*)'\]", r".\1", name[len(local) :])
    path = re.sub(r"\[(\d+)\]|\['([^']*)'\]", lambda m: "." + (m.group(1) or m.group(2)), path)
    return local, path.lstrip(".")


def _value(node: object) -> torch.Tensor | None:
    return node.meta.get("example_value", node.meta.get("val")) if isinstance(node, fx.Node) else None


@dataclass
class Weights:
    """``node -> qualified names`` of the weight inputs of a graph, and the absolute prefix of each
    frame local that module paths in node metadata start from."""

    names: dict[fx.Node, tuple[str, ...]] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)
    ids: dict[fx.Node, int] = field(default_factory=dict)
    """``id`` of each weight's real tensor (node metadata holds fake ones)."""

    @classmethod
    def of_graph(
        cls, gm: fx.GraphModule, example_inputs: list, root: nn.Module | None, buffer_patterns: tuple[str, ...] = ()
    ) -> Weights:
        """Parameters (and buffers matching ``buffer_patterns``) among the placeholders and
        ``get_attr`` nodes of ``gm``, named by identity in ``root`` where it holds them."""
        known: dict[int, list[str]] = {}
        buffers: set[int] = set()
        if root is not None:
            for name, p in root.named_parameters(remove_duplicate=False):
                known.setdefault(id(p), []).append(name)
            for name, b in root.named_buffers(remove_duplicate=False):
                known.setdefault(id(b), []).append(name)
                buffers.add(id(b))
        weights = cls()
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        for node, value in zip(placeholders, example_inputs, strict=False):
            source = getattr(getattr(node.meta.get("grapharg"), "source", None), "name", None)
            local, relative = split_source(source) if source else ("", "")
            names = tuple(known.get(id(value), ()))
            if local and names:
                for name in names:
                    if relative and (name == relative or name.endswith("." + relative)):
                        weights.prefixes.setdefault(local, name[: len(name) - len(relative)])
            if not names and relative and not local.startswith(_TEMPORARY):
                names = (relative,)
            marked = isinstance(value, torch.Tensor) and (id(value) in buffers or root is None)
            if isinstance(value, nn.Parameter) or (
                marked and any(fnmatch.fnmatchcase(n, p) for n in names for p in buffer_patterns)
            ):
                weights.names[node], weights.ids[node] = names, id(value)
        for node in gm.graph.nodes:
            value = getattr(gm, str(node.target), None) if node.op == "get_attr" else None
            if isinstance(value, nn.Parameter):
                weights.names[node], weights.ids[node] = (str(node.target),), id(value)
        return weights

    def of_body(self, body: fx.GraphModule, operands: list) -> Weights:
        """A subgraph's placeholders are weights when the operands passed to it are."""
        placeholders = [n for n in body.graph.nodes if n.op == "placeholder"]
        inner = {p: a for p, a in zip(placeholders, operands, strict=False) if a in self.names}
        return Weights(
            {p: self.names[a] for p, a in inner.items()}, self.prefixes, {p: self.ids[a] for p, a in inner.items()}
        )

    def is_weight(self, node: object, dims: int | None = 2) -> bool:
        """Whether ``node`` is a weight input (of ``dims`` dimensions and a float type)."""
        if not isinstance(node, fx.Node) or node not in self.names:
            return False
        value = _value(node)
        return value is None or (value.is_floating_point() and (dims is None or value.dim() == dims))

    def name(self, node: object, module_path: str = "") -> str:
        """The weight's qualified name; for a tied weight, the name under ``module_path``."""
        names = self.names.get(node, ()) if isinstance(node, fx.Node) else ()
        under = [n for n in names if module_path and n.startswith(module_path + ".")]
        return (under or list(names) or [""])[0]

    def module_path(self, node: fx.Node) -> str:
        """Path of the module that runs ``node``, from the compiled model (``""``: its root)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        local, path = split_source(list(stack.values())[-1][0])
        prefix = self.prefixes.get(local, "")
        return (prefix + path).rstrip(".") if path or prefix else ""
