"""The package's version, a hash of its code, and the versions of what it runs with (recorded in
every report)."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import platform
from collections.abc import Iterable
from pathlib import Path

import torch

__version__ = "0.2.0"


def versions(packages: Iterable[str] = ("triton", "quartet-compile")) -> dict[str, str]:
    """Python's and PyTorch's versions, and those of ``packages`` that are installed."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in packages:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


@functools.cache
def code_hash() -> str:
    """SHA-256 of the package's Python sources (names and contents): what compile caches key our
    graphs by, so that an edited or upgraded package never loads a graph an older one traced."""
    digest = hashlib.sha256(__version__.encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
