"""Kernel interface and registry: one kernel per backend, chosen per (format, device), with reasons."""
from __future__ import annotations

import logging

import torch

from ..errors import KernelError
from ..formats import FORMATS, get_format

log = logging.getLogger("engine.kernels")


Capability = tuple[int, int] | None  # a CUDA compute capability, or None: no CUDA GPU (the CPU)
Shape = tuple[int, int] | None  # (in_features, out_features) of one layer, or None: any layer


class Kernel:
    """A way to compute y = x @ W^T + b for a QuantLinear.

    Subclasses set `name` and `formats`, answer `can_implement(fmt, capability, shape)` with a reason
    (or None when they can run it): a pure function of its inputs, so hardware checks, preset choice and
    tests ask it for any GPU without having one. `unavailable(fmt, device, layer)` is the same question
    for a real device (plus, for some kernels, a check that needs that device). They implement
    `forward(layer, x2d)` for a 2-D activation.

    `native`: the format's arithmetic runs on tensor cores made for it (faster than bf16); False for the
    reference kernel and the MX/NV emulation, which compute in high precision from the stored values.
    `by_name_only`: never picked automatically on a GPU (the reference kernel).

    Kernels whose activation is an 8-bit tensor plus scales also name that activation kind
    (`act_kind`) and split `forward` into `quantize_input` and `forward_quantized`, so that code
    around the layer can produce the quantized activation itself (fused into a norm or GELU) or
    share one quantization among layers that read the same input (q, k, v).
    """

    name = "?"
    formats: frozenset[str] = frozenset()
    # Higher runs first in automatic selection.
    priority = 0
    native = True
    by_name_only = False

    def can_implement(self, fmt: str, capability: Capability, shape: Shape = None) -> str | None:
        """Why this kernel cannot run `fmt` on a GPU of `capability` (None: no CUDA GPU) for a layer of
        `shape` (None: any), or None when it can."""
        if fmt not in self.formats:
            return f"does not implement {fmt}"
        return None

    def unavailable(self, fmt: str, device: torch.device, layer=None) -> str | None:
        """Why this kernel cannot run `fmt` on `device` (and, when given, this layer's shape)."""
        device = torch.device(device)
        capability = cuda_capability(device)
        if device.type == "cuda" and capability is None:
            return f"{device} is not available: this machine has no usable CUDA GPU"
        return self.can_implement(fmt, capability, shape_of(layer))

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


def shape_of(layer) -> Shape:
    return None if layer is None else (layer.in_features, layer.out_features)


def needs_cuda(capability: Capability, need: tuple[int, int], what: str) -> str | None:
    """The capability part of every GPU kernel's answer, in one wording."""
    if capability is None:
        return "needs a CUDA GPU; this is the CPU"
    if tuple(capability) < need:
        return (f"{what} needs compute capability {need[0]}.{need[1]} or newer; this GPU is "
                f"{capability[0]}.{capability[1]}")
    return None


def capable(fmt: str, capability: Capability, shape: Shape = None) -> list[tuple[str, str | None]]:
    """Every kernel that may be picked automatically, best first (for a layer of `shape` when given),
    with the reason it cannot run `fmt` at `capability` (None when it can). Needs no GPU."""
    ranked = sorted(KERNELS.values(), key=lambda k: -k.rank(fmt, None, None))
    return [(k.name, k.can_implement(fmt, capability, shape)) for k in ranked
            if fmt in k.formats and not (k.by_name_only and capability is not None)]


def runnable(fmt: str, capability: Capability) -> list[Kernel]:
    """The kernels that run `fmt` at `capability` without being asked by name, best first."""
    return [KERNELS[name] for name, why in capable(fmt, capability) if why is None]


def formats_for(capability: Capability, native: bool = False) -> list[str]:
    """The formats some kernel runs at `capability` (`native`: on tensor cores made for them), in
    engine.formats' order."""
    return [f for f in FORMATS if any(k.native or not native for k in runnable(f, capability))]


# Compute capabilities of CUDA GPUs so far (Volta .. Blackwell), to state the lowest one a format needs.
KNOWN_CAPABILITIES = ((7, 0), (7, 2), (7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3),
                      (11, 0), (12, 0), (12, 1))


def min_capability(fmt: str) -> tuple[int, int] | None:
    """The lowest known capability at which some kernel runs `fmt` automatically, or None."""
    return next((cap for cap in KNOWN_CAPABILITIES if runnable(fmt, cap)), None)


def device_label(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        return f"{torch.cuda.get_device_name(idx)} (compute capability {major}.{minor})"
    return str(device)


def hint_for(fmt: str, device: torch.device) -> str:
    """What to choose instead, from the registry: the formats that do run here."""
    device = torch.device(device)
    low = min_capability(fmt)
    need = f"{fmt} runs on GPUs of compute capability {low[0]}.{low[1]} or newer. " if low else ""
    if device.type != "cuda" or cuda_capability(device) is None:
        return need + "On the CPU every format runs on the reference kernel."
    here = [get_format(f).label for f in formats_for(cuda_capability(device)) if f != fmt]
    if here:
        return need + f"Choose a format that runs on this GPU: {', '.join(here)}."
    return need + "No quantized format runs on this GPU: keep the model in bf16 (scheme bf16), or use another GPU."


# The one QuantLinear class, registered by engine.linear when it is imported: a kernel that must build a
# layer to check itself (torch_mx's first-use check) gets it here instead of importing upward.
_LAYER_CLASS: list[type] = []


def register_layer_class(cls: type) -> type:
    _LAYER_CLASS[:] = [cls]
    return cls


def layer_class() -> type:
    if not _LAYER_CLASS:
        raise KernelError("no layer class registered: import engine.linear before checking a kernel")
    return _LAYER_CLASS[0]


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    idx = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(idx)
