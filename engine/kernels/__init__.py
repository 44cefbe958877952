"""Kernel backends. Importing this package registers every kernel that this install can offer.

The GPU kernels import on any machine (their `unavailable` says why they cannot run here); only a
missing or broken optional dependency is tolerated, so a CPU-only install still imports.

Registry modules (one Kernel class each, registered on import): emulated, torch_scaled, eightbit_triton,
mx_emulated, torch_mx. Raw Triton code (triton_quant, triton_gemm, triton_mx, triton_wan, ops) imports
nothing from them. A new kernel: its module, and its name in the list below.
"""
import logging

from .base import KERNELS, Kernel, capable, explain, formats_for, register_kernel, runnable, select_kernel
from . import emulated  # noqa: F401  (registers the reference kernel)

for _module in ("torch_scaled", "eightbit_triton", "mx_emulated", "torch_mx"):
    try:
        __import__(f"{__name__}.{_module}")
    except ImportError as _e:  # e.g. a torch build without float8 dtypes
        logging.getLogger("engine.kernels").info("kernel module %s not loaded: %s", _module, _e)

__all__ = ["KERNELS", "Kernel", "capable", "explain", "formats_for", "register_kernel", "runnable", "select_kernel"]
