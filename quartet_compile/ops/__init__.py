"""The ``quartet`` custom ops and the one decision of which implementation runs them."""

from .inference import CacheInfo, clear_weight_cache, weight_cache_info
from .linear import quantized_linear
from .routing import Implementation, KernelPreference, Route, route

__all__ = [
    "CacheInfo",
    "Implementation",
    "KernelPreference",
    "Route",
    "clear_weight_cache",
    "quantized_linear",
    "route",
    "weight_cache_info",
]
