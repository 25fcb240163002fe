"""Triton kernels for NVFP4 quantization and GEMMs (Hopper emulation, Blackwell native)."""
