"""quartet-compile: NVFP4 training numerics (Quartet II + Four Over Six) for torch.compile.

The reference numerics live in :mod:`quartet_compile.reference`; FX passes in
:mod:`quartet_compile.passes` and Triton kernels in :mod:`quartet_compile.kernels`.
"""

from .config import QuartetConfig, Recipe
from .reference import NVFP4Tensor
from .reference.linear import quartet_linear

__version__ = "0.1.0"

__all__ = ["NVFP4Tensor", "QuartetConfig", "Recipe", "__version__", "quartet_linear"]
