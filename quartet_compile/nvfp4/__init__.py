"""The numerics contract that the reference and the kernels both implement: the NVFP4 format
and its container, the recipes resolved into plain numerics, the saved-tensor layout of the
linear layer, and the randomness of its backward. Nothing here computes a quantization."""

from .format import BLOCK, E2M1_MAX, E4M3_MAX, NVFP4Tensor, decode_e2m1, e2m1_values, pack_e2m1, unpack_e2m1
from .numerics import BackwardQuant, ForwardQuant, Numerics
from .randomness import RandomSource
from .saved import Saved

__all__ = [
    "BLOCK",
    "E2M1_MAX",
    "E4M3_MAX",
    "BackwardQuant",
    "ForwardQuant",
    "NVFP4Tensor",
    "Numerics",
    "RandomSource",
    "Saved",
    "decode_e2m1",
    "e2m1_values",
    "pack_e2m1",
    "unpack_e2m1",
]
