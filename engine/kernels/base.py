"""Kernel interface and registry: one kernel per backend, chosen per (format, device), with reasons."""
from __future__ import annotations

import logging

import torch

from ..errors import KernelError

log = logging.getLogger("engine.kernels")


class Kernel:
    """A way to compute y = x @ W^T + b for a QuantLinear.

    Subclasses set `name` and `formats`, answer `unavailable` with a reason (or None when they can
    run), and implement `forward(layer, x2d)` for a 2-D activation.

    Kernels whose activation is an 8-bit tensor plus scales also name that activation kind
    (`act_kind`) and split `forward` into `quantize_input` and `forward_quantized`, so that code
    around the layer can produce the quantized activation itself (fused into a norm or GELU) or
    share one quantization among layers that read the same input (q, k, v).
    """

    name = "?"
    formats: frozenset[str] = frozenset()
    # Higher runs first in automatic selection.
    priority = 0

    def unavailable(self, fmt: str, device: torch.device, layer=None) -> str | None:
        """Why this kernel cannot run `fmt` on `device` (and, when given, this layer's shape)."""
        if fmt not in self.formats:
            return f"does not implement {fmt}"
        return None

    def rank(self, fmt: str, device: torch.device | None = None, layer=None) -> int:
        """Order among usable kernels for a format (on this device, for this layer's shape when
        given); higher is tried first."""
        return self.priority

    # ---- pre-quantized activations (optional) -----------------------------------------------
    def act_kind(self, layer) -> str | None:
        """The activation kind (engine.kernels.triton_quant.ACT_KINDS) this kernel consumes, or None."""
        return None

    def row_pad(self, layer) -> int:
        """Quantized activations must have a multiple of this many rows (zero padding rows)."""
        return 1

    def quantize_input(self, layer, x: torch.Tensor):
        raise NotImplementedError

    def forward_quantized(self, layer, q: torch.Tensor, scale: torch.Tensor, rows: int,
                          out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        """q, scale from `quantize_input` (or a fused producer); returns [rows, out_features]."""
        raise NotImplementedError

    def prepare(self, layer) -> None:
        """Called once per layer and device before the first forward; may cache derived tensors."""

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


KERNELS: dict[str, Kernel] = {}


def register_kernel(kernel: Kernel) -> Kernel:
    KERNELS[kernel.name] = kernel
    return kernel


def explain(fmt: str, device: torch.device, layer=None) -> list[tuple[str, str | None]]:
    """Every kernel, best first, with the reason it cannot run here (None when it can)."""
    device = torch.device(device)
    ranked = sorted(KERNELS.values(), key=lambda k: -k.rank(fmt, device, layer))
    return [(k.name, k.unavailable(fmt, device, layer)) for k in ranked]


def select_kernel(fmt: str, device: torch.device, preference: str = "auto", layer=None) -> Kernel:
    device = torch.device(device)
    reasons = explain(fmt, device, layer)
    usable = [name for name, why in reasons if why is None]
    if preference not in ("auto", None) and preference in KERNELS:
        why = dict(reasons)[preference]
        if why is None:
            return KERNELS[preference]
        if not usable:
            raise KernelError(_no_kernel_message(fmt, device, reasons))
        log.warning("kernel %r cannot run %s on %s (%s); using %r", preference, fmt, device, why, usable[0])
        return KERNELS[usable[0]]
    if not usable:
        raise KernelError(_no_kernel_message(fmt, device, reasons))
    return KERNELS[usable[0]]


def _no_kernel_message(fmt, device, reasons) -> str:
    lines = [f"no kernel can run {fmt} on {device_label(device)}:"]
    lines += [f"  - {name}: {why}" for name, why in reasons]
    lines.append(hint_for(fmt, device))
    return "\n".join(lines)


def device_label(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return f"{torch.cuda.get_device_name(idx)} (compute capability {major}.{minor})"
    return str(device)


def hint_for(fmt: str, device: torch.device) -> str:
    if fmt.startswith("fp8"):
        return ("FP8 needs an FP8-capable GPU (compute capability 8.9 or newer: RTX 40, L40S, H100, "
                "Blackwell). On A100 or RTX 30 choose int8.")
    if fmt in ("mxfp8", "nvfp4", "mxfp4"):
        return "Choose fp8 (Hopper, Ada) or int8 (Ampere) instead."
    return "Choose another scheme, or run on a CUDA GPU of compute capability 8.0 or newer."


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(idx)
