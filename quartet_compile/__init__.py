"""quartet-compile: NVFP4 training numerics (Quartet II + Four Over Six) for torch.compile.

``torch.compile(model, backend="quartet")`` works after ``pip install`` (entry point);
:func:`backend` gives a configured backend, :func:`explain` a report of every matmul,
:func:`linear`, :class:`QuartetLinear` and :func:`swap_linears` the same numerics without
``torch.compile``, and :func:`export` an NVFP4 checkpoint of the trained weights that inference
engines load; :func:`weight_cache_info` and :func:`clear_weight_cache` inspect and empty the
inference path's cache of quantized weights.

Layers, each importing only those before it: :mod:`.nvfp4` (the numerics contract),
:mod:`.reference` and :mod:`.kernels` (its two implementations), :mod:`.ops` (the custom ops and
the routing between implementations), :mod:`.passes` (the FX graph pass), :mod:`.compiler` (the
``torch.compile`` backend), :mod:`.export` (checkpoints), then this public API.
"""

from .compiler import QuartetBackend, backend
from .config import QuartetConfig, Recipe
from .eager import QuartetLinear, linear, swap_linears
from .explain import ExplainReport, explain
from .export import ExportReport, export
from .nvfp4 import NVFP4Tensor
from .ops import KernelPreference, clear_weight_cache, weight_cache_info
from .version import __version__

__all__ = [
    "ExplainReport",
    "ExportReport",
    "KernelPreference",
    "NVFP4Tensor",
    "QuartetBackend",
    "QuartetConfig",
    "QuartetLinear",
    "Recipe",
    "__version__",
    "backend",
    "clear_weight_cache",
    "explain",
    "export",
    "linear",
    "swap_linears",
    "weight_cache_info",
]
