"""The package layout is the architecture: each layer of ``quartet_compile`` imports only the
layers below it, the two implementations of the numerics never import each other, and nothing
the users import depends on the benchmarking tool ``quartet_bench``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {
    "nvfp4": 0,
    "version": 0,
    "reference": 1,
    "kernels": 1,
    "ops": 2,
    "config": 3,
    "passes": 4,
    "compiler": 5,
    "explain": 6,
    "eager": 6,
    "export": 7,
    "check": 7,
    "": 8,  # the package's __init__: the public API
}


def _imports(package: str) -> list[tuple[str, str]]:
    """``(importing module, imported module)`` of every import in ``package`` (relative ones
    resolved)."""
    edges = []
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        here = parts[:-1] if parts[-1] == "__init__" else parts
        package_parts = parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package_parts[: len(package_parts) - node.level + 1] if node.level else []
                edges.append((".".join(here), ".".join(base + (node.module or "").split(".")).strip(".")))
            elif isinstance(node, ast.Import):
                edges += [(".".join(here), alias.name) for alias in node.names]
    return edges


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return (parts[1] if len(parts) > 1 else "") if parts[0] == "quartet_compile" else None


def test_layers_import_only_downwards():
    wrong = []
    for source, target in _imports("quartet_compile"):
        if source == "quartet_compile.__main__":
            continue  # the `python -m quartet_compile` command: runs the demo of quartet_bench
        if target.startswith("quartet_bench"):
            wrong.append((source, target))
            continue
        here, there = _layer(source), _layer(target)
        if there is not None and here != there and LAYERS[there] >= LAYERS[here]:
            wrong.append((source, target))
    assert not wrong, wrong


def test_every_module_has_a_layer():
    modules = {path.relative_to(ROOT / "quartet_compile").parts[0].removesuffix(".py")
               for path in (ROOT / "quartet_compile").glob("*")
               if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists())}  # fmt: skip
    assert modules - {"__init__", "__main__"} <= set(LAYERS), modules - set(LAYERS)
