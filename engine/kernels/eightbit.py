"""What the 8-bit GPU kernels share: quantizing the activation, per-layer caches, capability checks."""
from __future__ import annotations

import torch

from ..formats import get_format
from .base import Kernel, cuda_capability


def _ops():
    """The Triton custom ops, or None without triton (activations then go through torch ops:
    correct, but several passes). Imported late: ops imports the kernel modules that import us."""
    try:
        from . import ops
    except ImportError:
        return None
    return ops

# format -> the activation kind its GEMM consumes (engine.kernels.triton_quant.ACT_KINDS)
ACT_KIND = {"fp8": "fp8_row", "int8": "int8_row", "fp8_block128": "fp8_g128"}
MAX_ROW = 16384  # longest activation row the fused Triton quantizer holds in registers


def layer_cache(layer) -> dict:
    """Derived tensors a kernel keeps per layer; QuantLinear clears its kernels when moved."""
    cache = layer.__dict__.get("_kernel_cache")
    if cache is None:
        cache = layer.__dict__["_kernel_cache"] = {}
    return cache


def pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] == rows:
        return t
    return torch.cat([t, t.new_zeros((rows - t.shape[0],) + tuple(t.shape[1:]))])


def needs_cuda(device: torch.device, need: tuple[int, int], what: str) -> str | None:
    cap = cuda_capability(device)
    if cap is None:
        return f"needs a CUDA GPU; this is {device}"
    if cap < need:
        return (f"{what} needs compute capability {need[0]}.{need[1]} or newer; this GPU is "
                f"{cap[0]}.{cap[1]}")
    return None


class EightBitKernel(Kernel):
    """Activation per token (or per 1x128 group) in 8 bits; the GEMM is the subclass's."""

    def act_kind(self, layer):
        return ACT_KIND.get(layer.fmt)

    def row_pad(self, layer):
        # cuBLAS 8-bit GEMMs want 16-aligned rows; every 8-bit kernel pads alike, so that one
        # quantized activation can feed layers that picked different kernels
        return 16

    def quantize_input(self, layer, x: torch.Tensor):
        kind = self.act_kind(layer)
        pad = self.row_pad(layer)
        ops = _ops()
        if ops is not None and x.is_cuda and x.shape[1] <= MAX_ROW:
            return ops.quantize_rows(x, kind, False, pad)
        q = get_format(layer.fmt).quantize_activation(x)
        rows = -(-x.shape[0] // pad) * pad
        scale = pad_rows(q.scale, rows)
        if kind == "fp8_g128":
            scale = scale.t().contiguous().t()
        return pad_rows(q.data, rows), scale

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        q, s = self.quantize_input(layer, x)
        return self.forward_quantized(layer, q, s, x.shape[0], x.dtype)
