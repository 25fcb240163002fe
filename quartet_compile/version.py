"""The package's version, and the versions of what it runs with (recorded in every report)."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterable

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
