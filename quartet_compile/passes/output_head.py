"""Which matmul is the model's output head, decided from what it is rather than what it is
called: RoBERTa's ``lm_head.decoder`` and BERT's ``cls.predictions.decoder`` are heads as much as
Llama's ``lm_head``.

A head is (in this order of evidence) the module ``get_output_embeddings()`` returns on a
``transformers`` model, a projection whose weight is tied to an input embedding, or a projection
to the embedding's vocabulary whose result, through reshapes, casts and scalings only, is the
graph's output or goes into a softmax or a loss.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .weights import Weights, _value

_EMBEDDINGS = {F.embedding, torch.embedding, torch.ops.aten.embedding.default}
_PASSTHROUGH_METHODS = {
    "view", "reshape", "float", "to", "type", "contiguous", "flatten", "transpose", "permute",
    "squeeze", "unsqueeze", "__getitem__", "half", "bfloat16", "clone", "mul", "div", "tanh",
}  # fmt: skip
_PASSTHROUGH_FUNCTIONS = {
    operator.getitem, operator.mul, operator.truediv, torch.flatten, torch.reshape, torch.transpose,
    torch.permute, torch.squeeze, torch.unsqueeze, torch.tanh, torch.mul, torch.div,
}  # fmt: skip
_LOSS_WORDS = ("cross_entropy", "log_softmax", "softmax", "nll_loss", "loss")


def _embedding_weight(node: fx.Node) -> object:
    if node.target is torch.embedding or node.target is torch.ops.aten.embedding.default:
        return node.args[0] if node.args else None
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")


def _name(target: object) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


class OutputHeads:
    """The evidence of one graph (and of the compiled model, where known) about output heads."""

    def __init__(self, gm: fx.GraphModule, weights: Weights, root: nn.Module | None):
        self.head_ids: set[int] = set()
        self.tied_ids: set[int] = set()
        self.vocab_sizes: set[int] = set()
        if root is not None:
            get_head = getattr(root, "get_output_embeddings", None)
            head = get_head() if callable(get_head) else None
            if isinstance(getattr(head, "weight", None), torch.Tensor):
                self.head_ids.add(id(head.weight))
            for module in root.modules():
                if isinstance(module, nn.Embedding):
                    self.tied_ids.add(id(module.weight))
                    self.vocab_sizes.add(module.num_embeddings)
        for node in gm.graph.nodes:
            if node.op == "call_function" and node.target in _EMBEDDINGS:
                weight = _embedding_weight(node)
                if isinstance(weight, fx.Node):
                    if weight in weights.ids:
                        self.tied_ids.add(weights.ids[weight])
                    value = _value(weight)
                    if value is not None:
                        self.vocab_sizes.add(int(value.shape[0]))

    def reason(self, node: fx.Node, weight_id: int | None, n: int) -> str | None:
        """Why the matmul ``node`` whose weight is the tensor ``weight_id`` (``n`` output
        features) is an output head, or ``None`` if it is not one."""
        if weight_id in self.head_ids:
            return "get_output_embeddings() of the model"
        if weight_id in self.tied_ids:
            return "weight tied to the input embedding"
        if n in self.vocab_sizes and _reaches_logits(node):
            return f"projects to the {n}-entry vocabulary of the input embedding"
        return None


def _reaches_logits(node: fx.Node) -> bool:
    """Whether ``node``'s result, through reshapes, casts and scalings only, is a graph output or
    the input of a softmax or a loss."""
    seen, frontier = set(), [node]
    while frontier:
        current = frontier.pop()
        for user in current.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "output":
                return True
            name = _name(user.target)
            if user.op in ("call_function", "call_method") and any(word in name for word in _LOSS_WORDS):
                return True
            if (user.op == "call_method" and name in _PASSTHROUGH_METHODS) or (
                user.op == "call_function" and user.target in _PASSTHROUGH_FUNCTIONS
            ):
                frontier.append(user)
    return False
