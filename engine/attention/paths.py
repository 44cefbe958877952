"""Attention paths: a registry like engine.kernels', each path saying why it cannot run.

A path computes softmax(q kᵀ · scale) v for [B, S, H, D] tensors. Families group the paths that
compute the same numerics on different devices: "sdpa" (bf16 attention through torch's SDPA,
which picks cuDNN on Hopper), "sage8" (the 8-bit recipe reference.SAGE8: our Gluon kernel on
Hopper, our Triton kernel on other FP8 GPUs, the float64 reference on the CPU, for tests and tiny
models), "cudnn_fp8"
(per-tensor FP8 with smoothed K, reference.fp8_tensor_reference: cuDNN's sdpa_fp8 graph through
nvidia-cudnn-frontend on Hopper+, the float64 reference on the CPU).
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import KernelError
from ..kernels.base import cuda_capability, device_label
from . import cudnn_fp8, fp8_qkv, reference

log = logging.getLogger("engine.attention")

try:
    from . import triton_sage
    if triton_sage.triton is None:
        triton_sage = None
except ImportError:  # pragma: no cover
    triton_sage = None
try:
    from . import gluon_sage
except ImportError:  # pragma: no cover
    gluon_sage = None


class AttentionPath:
    name = "?"
    family = "?"
    describe = ""
    min_capability: tuple[int, int] | None = None  # CUDA paths: the oldest GPU generation that runs it

    def unavailable(self, device: torch.device, head_dim: int, dtype: torch.dtype) -> str | None:
        """Why this path cannot run on `device` for this head size and dtype (None: it can)."""
        return None

    def run(self, q, k, v, scale: float | None = None) -> torch.Tensor:
        raise NotImplementedError


def _cuda(device) -> tuple[tuple[int, int] | None, str | None]:
    """The compute capability of `device`, or why a CUDA path cannot look at one."""
    if device.type != "cuda":
        return None, "runs on CUDA GPUs only"
    cap = cuda_capability(device)
    return (cap, None) if cap is not None else (None, "no CUDA GPU is visible to torch")


def _half(dtype, what: str = "the kernel") -> str | None:
    return None if dtype in (torch.bfloat16, torch.float16) else f"inputs are {dtype}; {what} takes bf16 or fp16"


class SdpaPath(AttentionPath):
    name, family = "sdpa", "sdpa"
    describe = "bf16 SDPA (torch picks cuDNN on Hopper)"

    def run(self, q, k, v, scale=None):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)


class Sage8GluonPath(AttentionPath):
    name, family = "sage8_gluon", "sage8"
    describe = ("8-bit attention, our Gluon kernel for Hopper (a TMA producer warp, two consumer warpgroups; "
                "1.46x cuDNN bf16 at Wan 14B 480p on an H200)")
    min_capability = (9, 0)

    def unavailable(self, device, head_dim, dtype):
        if gluon_sage is None or triton_sage is None:
            return "triton is not installed"
        cap, why = _cuda(device)
        if why:
            return why
        if cap != (9, 0):
            return (f"{device_label(device)} is compute capability {cap[0]}.{cap[1]}; the kernel is written for "
                    "Hopper's warpgroup MMA (9.0)")
        why = gluon_sage.available()
        if why:
            return why
        if head_dim != gluon_sage.HEAD_DIM:
            return f"head dim {head_dim}; the kernel is built for {gluon_sage.HEAD_DIM} (every Wan model's)"
        return _half(dtype)

    def run(self, q, k, v, scale=None):
        return torch.ops.wanattn.sage8_gluon(q, k, v, -1.0 if scale is None else scale)


class Sage8TritonPath(AttentionPath):
    name, family = "sage8_triton", "sage8"
    describe = "8-bit attention, our Triton kernel (INT8 Q·Kᵀ with smoothed K, FP8 P·V)"
    min_capability = (8, 9)  # FP8 tensor-core instructions: Ada, Hopper, Blackwell

    def unavailable(self, device, head_dim, dtype):
        if triton_sage is None:
            return "triton is not installed"
        cap, why = _cuda(device)
        if why:
            return why
        if cap < self.min_capability:
            return (f"{device_label(device)} has no FP8 matrix instructions (compute capability 8.9+: Ada, "
                    "Hopper, Blackwell); on Ampere use torch_sdpa")
        if head_dim & (head_dim - 1) or not 16 <= head_dim <= 256:
            return f"head dim {head_dim} is not a power of two in 16..256"
        return _half(dtype)

    def run(self, q, k, v, scale=None):
        return torch.ops.wanattn.sage8(q, k, v, -1.0 if scale is None else scale)


class Sage8ReferencePath(AttentionPath):
    name, family = "sage8_reference", "sage8"
    describe = "8-bit attention numerics, float64 reference on the CPU (slow; tests and tiny models)"

    def unavailable(self, device, head_dim, dtype):
        if device.type != "cpu":
            return "the float64 reference runs on the CPU only"
        return None

    def run(self, q, k, v, scale=None):
        return reference.sage_reference(q, k, v, scale, recipe=reference.SAGE8).to(q.dtype)


class CudnnFp8Path(AttentionPath):
    name, family = "cudnn_fp8", "cudnn_fp8"
    describe = "FP8 attention, cuDNN sdpa_fp8 (per-tensor scales, K smoothed by our quantize launch)"
    min_capability = cudnn_fp8.MIN_CAPABILITY

    def __init__(self):
        self._probed: dict = {}

    def unavailable(self, device, head_dim, dtype):
        if fp8_qkv.triton is None:
            return "triton is not installed (the quantize launch is a Triton kernel)"
        cap, why = _cuda(device)
        if why:
            return why
        if cap < self.min_capability:
            return (f"{device_label(device)} is compute capability {cap[0]}.{cap[1]}; cuDNN's FP8 attention needs "
                    "9.0+ (Hopper, Blackwell); on Ada use sage_attn2")
        if head_dim & (head_dim - 1) or not 16 <= head_dim <= 256:
            return f"head dim {head_dim} is not a power of two in 16..256 (the quantize kernel's tiles)"
        why = _half(dtype, "the path")
        if why:
            return why
        cudnn, why = cudnn_fp8.load_frontend()
        if cudnn is None:
            return why
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = (device.index, head_dim, dtype)
        if key not in self._probed:
            try:
                cudnn_fp8.backend_version(cudnn)
            except Exception as e:
                self._probed[key] = f"nvidia-cudnn-frontend finds no usable cuDNN library ({type(e).__name__}: {e})"
            else:
                self._probed[key] = cudnn_fp8.probe(cudnn, device, head_dim, dtype)
        return self._probed[key]

    def run(self, q, k, v, scale=None):
        return torch.ops.wanattn.cudnn_fp8(q, k, v, -1.0 if scale is None else scale)


class Fp8ReferencePath(AttentionPath):
    name, family = "cudnn_fp8_reference", "cudnn_fp8"
    describe = "per-tensor FP8 attention numerics, float64 reference on the CPU (slow; tests and tiny models)"

    def unavailable(self, device, head_dim, dtype):
        if device.type != "cpu":
            return "the float64 reference runs on the CPU only"
        return None

    def run(self, q, k, v, scale=None):
        return reference.fp8_tensor_reference(q, k, v, scale).to(q.dtype)


PATHS: dict[str, AttentionPath] = {}
FAMILIES = ("sdpa", "sage8", "cudnn_fp8")


def register_path(path: AttentionPath) -> AttentionPath:
    PATHS[path.name] = path
    return path


for _p in (Sage8GluonPath(), Sage8TritonPath(), Sage8ReferencePath(), CudnnFp8Path(), Fp8ReferencePath(), SdpaPath()):
    register_path(_p)


def explain(family: str, device, head_dim: int, dtype) -> list[tuple[str, str | None]]:
    """Every path of `family`, in preference order, with why it cannot run here (None: it can)."""
    device = torch.device(device)
    return [(p.name, p.unavailable(device, head_dim, dtype)) for p in PATHS.values() if p.family == family]


def gpu_problem(family: str, capability: tuple[int, int], gpu_name: str) -> str | None:
    """Before anything is loaded: why no CUDA path of `family` runs on a GPU of this compute capability."""
    cuda = [p for p in PATHS.values() if p.family == family and p.min_capability is not None]
    if not cuda or any(capability >= p.min_capability for p in cuda):
        return None
    need = min(p.min_capability for p in cuda)
    gens = "Ada, Hopper, Blackwell" if need < (9, 0) else "Hopper, Blackwell"
    return (f"{gpu_name} is compute capability {capability[0]}.{capability[1]}; the {family} attention paths need "
            f"{need[0]}.{need[1]}+ ({gens}). Set self_attn_1_type to torch_sdpa.")


def select_path(family: str, device, head_dim: int, dtype) -> AttentionPath:
    """The first usable path of `family`; raises KernelError listing every path's reason."""
    if family not in FAMILIES:
        raise KernelError(f"unknown attention family {family!r}; valid: {', '.join(FAMILIES)}")
    reasons = explain(family, device, head_dim, dtype)
    for name, why in reasons:
        if why is None:
            return PATHS[name]
    lines = [f"no {family} attention path can run on {device_label(torch.device(device))}:"]
    lines += [f"  - {name}: {why}" for name, why in reasons]
    lines.append("Set self_attn_1_type to torch_sdpa (bf16 attention runs everywhere).")
    raise KernelError("\n".join(lines))


def _like_q(q, k, v, scale):
    """What every attention op returns, for torch.compile's tracing (register_fake)."""
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


if triton_sage is not None:
    @torch.library.custom_op("wanattn::sage8", mutates_args=())
    def sage8_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """[B, S, H, D] in and out; scale < 0 means 1/sqrt(D)."""
        return triton_sage.attention_8bit(q, k, v, None if scale < 0 else scale, config=triton_sage.LANES)

    sage8_op.register_fake(_like_q)

    @torch.library.custom_op("wanattn::sage8_gluon", mutates_args=())
    def sage8_gluon_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """[B, S, H, D] in and out; scale < 0 means 1/sqrt(D)."""
        return gluon_sage.attention_8bit(q, k, v, None if scale < 0 else scale)

    sage8_gluon_op.register_fake(_like_q)


if fp8_qkv.triton is not None:
    @torch.library.custom_op("wanattn::cudnn_fp8", mutates_args=())
    def cudnn_fp8_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """[B, S, H, D] in and out; scale < 0 means 1/sqrt(D)."""
        cudnn, why = cudnn_fp8.load_frontend()
        if cudnn is None:
            raise KernelError(why)
        return cudnn_fp8.attention_fp8(cudnn, q, k, v, None if scale < 0 else scale)

    cudnn_fp8_op.register_fake(_like_q)
