"""quartet-compile: NVFP4 training numerics (Quartet II + Four Over Six) for torch.compile.

``torch.compile(model, backend="quartet")`` works after ``pip install`` (entry point);
``quartet_compile.backend(...)`` gives a configured backend, ``explain(...)`` a report.

The reference numerics live in :mod:`quartet_compile.reference`; FX passes in
:mod:`quartet_compile.passes` and Triton kernels in :mod:`quartet_compile.kernels`.
"""

from .config import QuartetConfig, Recipe
from .dynamo_backend import QuartetBackend, backend
from .explain import ExplainReport, explain
from .reference import NVFP4Tensor
from .reference.linear import quartet_linear

__version__ = "0.1.0"

__all__ = [
    "ExplainReport",
    "NVFP4Tensor",
    "QuartetBackend",
    "QuartetConfig",
    "Recipe",
    "__version__",
    "backend",
    "explain",
    "quartet_linear",
]
