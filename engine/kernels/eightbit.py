"""What the 8-bit GPU kernels share: quantizing the activation, per-layer caches.

A registry module: the raw Triton code it calls (ops, triton_quant) imports nothing from here.
"""
from __future__ import annotations

import torch

from ..formats import ACT_KINDS, get_format
from .base import Kernel
from .triton_quant import MAX_ROW

try:  # the Triton custom ops; without triton, activations go through torch ops (correct, several passes)
    from . import ops
except ImportError:
    ops = None

__all__ = ["EightBitKernel", "MAX_ROW", "layer_cache", "pad_rows"]


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


class EightBitKernel(Kernel):
    """Activation per token (or per 1x128 group) in 8 bits; the GEMM is the subclass's."""

    def act_kind(self, layer):
        kind = get_format(layer.fmt).act_kind  # declared by the format (engine/formats)
        return kind if kind in ACT_KINDS else None

    def row_pad(self, layer):
        # cuBLAS 8-bit GEMMs want 16-aligned rows; every 8-bit kernel pads alike, so that one
        # quantized activation can feed layers that picked different kernels
        return 16

    def quantize_input(self, layer, x: torch.Tensor):
        kind = self.act_kind(layer)
        pad = self.row_pad(layer)
        if ops is not None and x.is_cuda and x.shape[1] <= MAX_ROW:
            return ops.quantize_rows(x, kind, False, pad)
        q = get_format(layer.fmt).quantize_activation(x)
        rows = -(-x.shape[0] // pad) * pad
        scale = pad_rows(q.scale, rows)
        if ACT_KINDS[kind].group:
            scale = scale.t().contiguous().t()
        return pad_rows(q.data, rows), scale

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        q, s = self.quantize_input(layer, x)
        return self.forward_quantized(layer, q, s, x.shape[0], x.dtype)
