"""Pure-PyTorch reference numerics (SPEC sections 1-5): the single source of truth that every
kernel is tested against. Runs on any device."""

from ..nvfp4.format import NVFP4Tensor, decode_e2m1, pack_e2m1, unpack_e2m1
from ..nvfp4.randomness import random_signs
from .hadamard import hadamard_matrix, inverse_rht, rht
from .matmul import nvfp4_matmul
from .quantizers import (
    quantize_four_over_six,
    quantize_ms_eden,
    quantize_ms_eden_rotated,
    quantize_rtn,
    quantize_rtn_2d,
    quantize_sr,
)
from .rounding import round_to_e2m1, round_to_e4m3, stochastic_round_to_e2m1, stochastic_round_to_e4m3

__all__ = [
    "NVFP4Tensor",
    "decode_e2m1",
    "hadamard_matrix",
    "inverse_rht",
    "nvfp4_matmul",
    "pack_e2m1",
    "quantize_four_over_six",
    "quantize_ms_eden",
    "quantize_ms_eden_rotated",
    "quantize_rtn",
    "quantize_rtn_2d",
    "quantize_sr",
    "random_signs",
    "rht",
    "round_to_e2m1",
    "round_to_e4m3",
    "stochastic_round_to_e2m1",
    "stochastic_round_to_e4m3",
    "unpack_e2m1",
]
