"""The reference kernel: quantize the activation, dequantize both sides, matmul in float32.

It defines what every fast kernel must reproduce. It runs anywhere, but on a GPU only when asked for
by name: a slow path must never be picked silently.
"""
import torch

from ..formats import FORMATS, Quantized, get_format
from .base import Kernel, register_kernel


class EmulatedKernel(Kernel):
    name = "emulated"
    formats = frozenset(FORMATS)
    priority = -100
    native = False
    by_name_only = True  # on a GPU

    def can_implement(self, fmt, capability, shape=None):
        if fmt not in FORMATS:
            return f"does not implement {fmt}"
        if capability is not None:
            return "reference kernel (dequantize + float32 matmul); on a GPU it runs only when asked for by name"
        return None

    def forward(self, layer, x):
        return reference_linear(layer, x)


def reference_linear(layer, x: torch.Tensor) -> torch.Tensor:
    fmt = get_format(layer.fmt)
    qx = fmt.quantize_activation(x, layer.static_input_scale())
    w = fmt.dequantize_weight(layer.quantized_weight())
    y = fmt.dequantize_activation(qx) @ w.t()
    if layer.bias is not None:
        y = y + layer.bias.to(torch.float32)
    return y.to(x.dtype)


register_kernel(EmulatedKernel())
__all__ = ["EmulatedKernel", "reference_linear", "Quantized"]
