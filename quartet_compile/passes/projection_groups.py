"""The linear layers inference engines run as one GEMM: sibling projections of one input (q/k/v of
attention, gate/up of a gated MLP, in ``transformers`` naming), loaded as one fused weight with one
tensor scale. Export writes each group with a shared scale; the ``fuse_projections`` option
trains each group as one GEMM, so that what is served is what was trained."""

from __future__ import annotations

from collections.abc import Sequence

FUSED_PROJECTIONS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Sibling module names that engines load as one fused weight, in the order they concatenate them."""


def fused_groups(modules: Sequence[str]) -> list[tuple[str, ...]]:
    """Every complete group of :data:`FUSED_PROJECTIONS` siblings among the module paths."""
    present = set(modules)
    groups = []
    for module in modules:
        parent, _, leaf = module.rpartition(".")
        for names in FUSED_PROJECTIONS:
            if leaf == names[0]:
                members = tuple(f"{parent}.{name}" if parent else name for name in names)
                if all(m in present for m in members):
                    groups.append(members)
    return groups
