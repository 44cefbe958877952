"""QuantLinear: the one module that replaces nn.Linear.

It holds the quantized weight as buffers named the way LightX2V's files name them (`weight`,
`weight_scale`, `weight_global_scale`, `input_global_scale`), so a state dict loads with assign=True
straight from a memory-mapped file. The kernel is picked per device on first use and can be asked why.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from .formats import Quantized, get_format
from .kernels import select_kernel
from .kernels.base import register_layer_class

log = logging.getLogger("engine.linear")
QUANT_BUFFERS = ("weight", "weight_scale", "weight_global_scale", "input_global_scale")


@register_layer_class  # kernels that build a layer to check themselves use this class, without importing up
class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, fmt: str, bias: bool = True, *,
                 kernel: str = "auto", device=None, bias_dtype: torch.dtype = torch.bfloat16,
                 static_input_scale: bool = False):
        super().__init__()
        f = get_format(fmt)
        if in_features % f.col_multiple:
            from .errors import FormatError
            raise FormatError(f"{fmt}: {in_features} input features is not a multiple of {f.col_multiple}")
        self.in_features, self.out_features, self.fmt, self.kernel_preference = in_features, out_features, fmt, kernel
        empty = lambda shape, dtype: torch.empty(shape, dtype=dtype, device=device)  # noqa: E731
        self.register_buffer("weight", empty(f.data_shape(out_features, in_features), f.data_dtype))
        self.register_buffer("weight_scale", empty(f.weight_scale_shape(out_features, in_features), f.scale_dtype))
        if f.has_global_scale:
            self.register_buffer("weight_global_scale", empty((1,), torch.float32))
            if static_input_scale:
                self.register_buffer("input_global_scale", empty((1,), torch.float32))
        self.bias = nn.Parameter(empty((out_features,), bias_dtype), requires_grad=False) if bias else None
        self._kernels: dict[torch.device, object] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, kernel: str = "auto") -> "QuantLinear":
        f = get_format(fmt)
        q = f.quantize_weight(linear.weight.detach())
        has_bias = linear.bias is not None
        mod = cls(linear.in_features, linear.out_features, fmt, has_bias, kernel=kernel, device="meta",
                  bias_dtype=linear.bias.dtype if has_bias else torch.bfloat16)
        mod.set_quantized(q)
        if has_bias:
            mod.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return mod

    def set_quantized(self, q: Quantized) -> None:
        self.weight, self.weight_scale = q.data, q.scale
        if q.global_scale is not None:
            self.weight_global_scale = q.global_scale.reshape(1).to(torch.float32)

    def quantized_weight(self) -> Quantized:
        return Quantized(self.weight, self.weight_scale, getattr(self, "weight_global_scale", None),
                         cols=self.in_features)

    def static_input_scale(self) -> torch.Tensor | None:
        return getattr(self, "input_global_scale", None)

    def kernel_for(self, device: torch.device):
        kernel = self._kernels.get(device)
        if kernel is None:
            kernel = select_kernel(self.fmt, device, self.kernel_preference, layer=self)
            kernel.prepare(self)
            self._kernels[device] = kernel
        return kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.kernel_for(x.device).forward(self, x.reshape(-1, self.in_features))
        return y.reshape(*lead, self.out_features)

    def _apply(self, fn, recurse=True):
        """Moves follow the module; dtype casts do not reach the quantized buffers.

        `module.to(torch.bfloat16)` casts every floating-point tensor, and float8 counts as one: the
        fp8 weight and the fp32 scales would silently become bf16 (the memory saving gone, the scales
        rounded). So the quantized buffers only change device; the bias is cast like any parameter.
        """
        # moved or cast: kernels re-select and re-prepare for the new device, and the tensors they derived
        # (engine.kernels.eightbit.layer_cache: bias, scales, Blackwell's weight operand) go too, or a
        # cached copy would keep the old device's memory alive after the move
        self._kernels.clear()
        self.__dict__.pop("_kernel_cache", None)
        held = {name: self._buffers[name] for name in QUANT_BUFFERS if self._buffers.get(name) is not None}
        for name in held:
            self._buffers[name] = None
        try:
            super()._apply(fn, recurse)
        finally:
            if held:
                device = fn(torch.empty(0, device=next(iter(held.values())).device)).device
                for name, t in held.items():
                    self._buffers[name] = (torch.empty_like(t, device=device) if t.is_meta and device.type != "meta"
                                           else t.to(device))
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, "
                f"bias={self.bias is not None}, kernel={self.kernel_preference}")
