"""The ``quartet`` custom ops and the one decision of which implementation runs them."""

from .linear import quantized_linear
from .routing import Implementation, KernelPreference, Route, route

__all__ = ["Implementation", "KernelPreference", "Route", "quantized_linear", "route"]
