"""Our Triton kernels as torch custom ops (namespace `wanq`).

As custom ops, torch.compile treats each kernel as one opaque node with a known output shape
(the fake implementations below) instead of breaking the graph at a Python call into Triton.
In eager mode the same names call the kernels directly: a custom op's Python dispatch costs tens
of microseconds per call, as much as a whole 1536-wide GEMM's quantization (measured on H100).
Only imported where Triton is.
"""
from __future__ import annotations

import math

import torch

from . import triton_gemm, triton_quant, triton_wan
from .triton_quant import ACT_KINDS, padded

if triton_quant.triton is None:
    raise ImportError("triton is not installed")


def _fake_act(m: int, k: int, kind: str, like: torch.Tensor):
    dtype, _, _, group = ACT_KINDS[kind]
    q = like.new_empty((m, k), dtype=dtype)
    if group:
        s = like.new_empty((math.ceil(k / group), m), dtype=torch.float32).t()
    else:
        s = like.new_empty((m, 1), dtype=torch.float32)
    return q, s


@torch.library.custom_op("wanq::quantize_rows", mutates_args=())
def quantize_rows_op(x: torch.Tensor, kind: str, gelu: bool, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_quant.quantize_rows(x, kind, gelu=gelu, pad=pad)


@quantize_rows_op.register_fake
def _(x, kind, gelu, pad):
    return _fake_act(padded(x.shape[0], pad), x.shape[1], kind, x)


@torch.library.custom_op("wanq::quantize_heads", mutates_args=())
def quantize_heads_op(x: torch.Tensor, kind: str, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    return triton_quant.quantize_heads(x, kind, pad=pad)


@quantize_heads_op.register_fake
def _(x, kind, pad):
    return _fake_act(padded(x.shape[0] * x.shape[1], pad), x.shape[2] * x.shape[3], kind, x)


@torch.library.custom_op("wanq::norm_quant", mutates_args=())
def norm_quant_op(h: torch.Tensor, y: torch.Tensor | None, gate: torch.Tensor | None, weight: torch.Tensor | None,
               bias: torch.Tensor | None, shift: torch.Tensor | None, scale: torch.Tensor | None,
               kind: str, eps: float, pad: int, norm: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _norm_quant_impl(h, y, gate, weight, bias, shift, scale, kind, eps, pad, norm)


def _norm_quant_impl(h, y, gate, weight, bias, shift, scale, kind, eps, pad, norm):
    new_h, q, s = triton_quant.norm_quant(h, kind, eps, y=y, gate=gate, weight=weight, bias=bias,
                                          shift=shift, scale=scale, pad=pad, norm=norm)
    # a custom op may not return its input: without a residual the new hidden state is empty
    return (new_h if new_h is not None else h.new_empty(0)), q, s


@norm_quant_op.register_fake
def _(h, y, gate, weight, bias, shift, scale, kind, eps, pad, norm):
    m = h.shape[0] * h.shape[1]
    q, s = _fake_act(padded(m, pad), h.shape[2], kind, h)
    return (torch.empty_like(h) if y is not None else h.new_empty(0)), q, s


@torch.library.custom_op("wanq::scaled_gemm", mutates_args=())
def scaled_gemm_op(a: torch.Tensor, w: torch.Tensor, sa: torch.Tensor, sw: torch.Tensor, bias: torch.Tensor | None,
                out_dtype: torch.dtype, blockwise: bool) -> torch.Tensor:
    return triton_gemm.scaled_gemm(a, w, sa, sw, bias, out_dtype, blockwise)


@scaled_gemm_op.register_fake
def _(a, w, sa, sw, bias, out_dtype, blockwise):
    return a.new_empty((a.shape[0], w.shape[0]), dtype=out_dtype)


@torch.library.custom_op("wanq::rmsnorm_rope", mutates_args=())
def rmsnorm_rope_op(x: torch.Tensor, weight: torch.Tensor, eps: float, head_dim: int,
                 cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
    return triton_wan.rmsnorm_rope(x, weight, eps, head_dim, cos, sin)


@rmsnorm_rope_op.register_fake
def _(x, weight, eps, head_dim, cos, sin):
    return torch.empty_like(x)


@torch.library.custom_op("wanq::gated_residual", mutates_args=())
def gated_residual_op(h: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return triton_wan.gated_residual(h, y, gate)


@gated_residual_op.register_fake
def _(h, y, gate):
    return torch.empty_like(h)


# ---- what callers use: the custom op under torch.compile, the kernel itself in eager mode ------
def _dispatch(op, eager):
    def call(*args):
        if torch.compiler.is_compiling():
            return op(*args)
        return eager(*args)
    return call


quantize_rows = _dispatch(quantize_rows_op, lambda x, kind, gelu, pad: triton_quant.quantize_rows(x, kind, gelu, pad))
quantize_heads = _dispatch(quantize_heads_op, lambda x, kind, pad: triton_quant.quantize_heads(x, kind, pad))
norm_quant = _dispatch(norm_quant_op, _norm_quant_impl)
scaled_gemm = _dispatch(scaled_gemm_op, triton_gemm.scaled_gemm)
rmsnorm_rope = _dispatch(rmsnorm_rope_op, triton_wan.rmsnorm_rope)
gated_residual = _dispatch(gated_residual_op, triton_wan.gated_residual)
