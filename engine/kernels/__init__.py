"""Kernel backends. Importing this package registers every kernel that this install can offer."""
from .base import KERNELS, Kernel, explain, register_kernel, select_kernel
from . import emulated  # noqa: F401  (registers the reference kernel)

__all__ = ["KERNELS", "Kernel", "explain", "register_kernel", "select_kernel"]
