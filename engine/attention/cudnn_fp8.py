"""FP8 attention through cuDNN's `sdpa_fp8` graph (nvidia-cudnn-frontend), with our K smoothing.

Numerics: engine/attention/reference.py's `fp8_tensor_reference` (K minus its per-channel token
mean, exact under softmax; Q, K, V in e4m3 with one scale per tensor; P in e4m3 as p·448). The
quantize launches are fp8_qkv.py's; this file builds, caches and runs the cuDNN graph.

Facts from the frontend (1.32, its docstrings and its tests/python/sdpa/fp8.py): the graph takes
Q/K/V [B, H, S, D] descriptors with any strides (we declare [B, S, H, D] memory), six float32
[1,1,1,1] device scalars (descale q/k/v, descale_s, scale_s, scale_o), `generate_stats=False` for
inference; it returns O, Stats, Amax_S, Amax_O. With P ≤ 1, scale_s = 448 and descale_s = 1/448;
O is declared bf16 (scale_o = 1), else fp16 and cast, else e4m3 and dequantized: cuDNN 9.19 on Hopper
serves FP8 outputs only ("sdpa fp8 forward with HALF/BFLOAT16 output is only supported on Blackwell").
An e4m3 O is written in units of twice V's scale (scale_o = 1 / (2·V's scale)): O averages V's rows, so it
is at most 448 in V's units, and a little more (up to 2^-4) because P is summed into l before its e4m3
rounding; e4m3 overflows at 464, so the factor 2 keeps that margin, and costs no precision (e4m3 is a
float). `execute` multiplies by 2·V's scale into the caller's bf16 tensor; see graph_for.
Amax_S stays virtual (its docstring: an output would restrict the engines); Amax_O is an output
(the frontend's own tests always bind it). Q, K and V take one scale each: the descales are
scalars (per-head scales are not in the API). `sdpa_mxfp8` (one
E8M0 scale per 32) is documented as Blackwell-only, so it is not offered here.

A graph build takes seconds, so graphs are cached by (device, B, H, S, D, dtype, scale); the
layout is fixed by fp8_qkv (contiguous [B, S, H, D]) so the strides follow from the shape.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass

import torch

from ..errors import KernelError

log = logging.getLogger("engine.attention")

MIN_CAPABILITY = (9, 0)  # cuDNN's FP8 attention: Hopper and newer
PROBE_TOKENS = 256  # the shape `probe` builds to ask cuDNN whether a head dim / dtype is served


def load_frontend():
    """(the `cudnn` module, None) or (None, why it is not usable)."""
    try:
        import cudnn
    except Exception as e:  # ImportError, or a broken install raising anything else
        return None, (f"nvidia-cudnn-frontend is not importable ({type(e).__name__}: {e}); install it "
                      "(pip install nvidia-cudnn-frontend) or choose another self_attn_1_type")
    if not hasattr(cudnn, "pygraph") or not hasattr(cudnn._pybind_module.backend_graph, "sdpa_fp8"):
        return None, f"nvidia-cudnn-frontend {getattr(cudnn, '__version__', '?')} has no sdpa_fp8 graph op (need 1.32+)"
    return cudnn, None


def backend_version(cudnn) -> str:
    """The cuDNN library version the frontend talks to; binds torch's own libcudnn when the frontend's
    search (LD_LIBRARY_PATH, then site-packages' nvidia/cudnn) found none."""
    try:
        return cudnn.backend_version_string()
    except RuntimeError:
        pass
    torch.backends.cudnn.version()  # torch loads its libcudnn
    path = _loaded_library("libcudnn.so")
    if path is None:
        raise RuntimeError("no libcudnn is loaded in this process (torch.backends.cudnn.version() loaded none)")
    old = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = os.path.dirname(path)
    try:
        ctypes.CDLL(path)
        cudnn._dlopen_cudnn()  # the frontend's own loader, pointed at torch's copy
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old
    return cudnn.backend_version_string()


def _loaded_library(stem: str) -> str | None:
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                if os.path.basename(path).startswith(stem):
                    return path
    except OSError:
        pass
    return None


@dataclass
class Fp8Graph:
    graph: object
    uids: dict  # name -> uid
    workspace: torch.Tensor
    amax_o: torch.Tensor  # cuDNN writes O's amax here (unused)
    plan: str  # the engine cuDNN chose, for logs and the bench
    out_dtype: torch.dtype  # O as cuDNN writes it (fp16 or e4m3 where it declines bf16; converted after)


_GRAPHS: dict = {}  # key -> Fp8Graph, or the KernelError text of a shape cuDNN declined
_HANDLES: dict = {}
_CONST: dict = {}
_O_DTYPE: dict = {}  # (device index, requested O dtype) -> the O dtype cuDNN last built
_LOCK = threading.Lock()
_EXEC_LOCK = threading.Lock()


def _handle(cudnn, device: torch.device):
    h = _HANDLES.get(device.index)
    if h is None:
        with torch.cuda.device(device):
            h = _HANDLES[device.index] = cudnn.create_handle()
    return h


def _constants(device: torch.device) -> torch.Tensor:
    """[descale_s, scale_s, scale_o] as float32 device scalars in rows of 4 (16-byte aligned):
    P scaled by 448, bf16 O unscaled."""
    c = _CONST.get(device.index)
    if c is None:
        c = torch.tensor([1 / 448.0, 448.0, 1.0], dtype=torch.float32)[:, None].expand(3, 4).contiguous()
        c = _CONST[device.index] = c.to(device)
    return c


def declare_graph(cudnn, b: int, h: int, s: int, d: int, out_dtype: torch.dtype, scale: float, handle=None):
    """The sdpa_fp8 graph for contiguous [B, S, H, D] e4m3 q/k/v and an `out_dtype` O, declared and
    validated (no GPU needed up to here): (graph, {name: uid})."""
    dt = cudnn.data_type
    fp8, f32 = dt.FP8_E4M3, dt.FLOAT
    out = {torch.bfloat16: dt.BFLOAT16, torch.float16: dt.HALF, torch.float8_e4m3fn: fp8}[out_dtype]
    g = cudnn.pygraph(io_data_type=fp8, intermediate_data_type=f32, compute_data_type=f32, handle=handle)
    dim, stride = (b, h, s, d), (s * h * d, d, h * d, 1)  # [B, H, S, D] view of [B, S, H, D] memory
    q, k, v = (g.tensor(name=n, dim=dim, stride=stride, data_type=fp8) for n in ("q", "k", "v"))
    scalars = {n: g.tensor(name=n, dim=(1, 1, 1, 1), stride=(1, 1, 1, 1), data_type=f32)
               for n in ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")}
    o, _stats, _amax_s, amax_o = g.sdpa_fp8(q=q, k=k, v=v, **scalars, generate_stats=False, attn_scale=scale,
                                            name="attn")
    o.set_output(True).set_dim(dim).set_stride(stride).set_data_type(out)
    amax_o.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(f32)
    g.validate()
    uids = {n: t.uid for n, t in (("q", q), ("k", k), ("v", v), ("o", o), ("amax_o", amax_o), *scalars.items())}
    return g, uids


def build_graph(cudnn, device: torch.device, b: int, h: int, s: int, d: int, out_dtype: torch.dtype,
                scale: float) -> Fp8Graph:
    """Declare and build (uncached) the graph on `device`. Raises cudnn's errors unchanged."""
    with torch.cuda.device(device):
        g, uids = declare_graph(cudnn, b, h, s, d, out_dtype, scale, _handle(cudnn, device))
        g.build_operation_graph()
        g.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        g.check_support()
        g.build_plans()
        workspace = torch.empty(max(1, g.get_workspace_size()), device=device, dtype=torch.uint8)
        amax_buf = torch.empty(4, device=device, dtype=torch.float32)
    try:
        plan = g.get_plan_name_at_index(0)
    except Exception:  # naming is informational only
        plan = "?"
    return Fp8Graph(g, uids, workspace, amax_buf, plan, out_dtype)


def _build_first(cudnn, device, b, h, s, d, out_dtype, scale):
    """(graph, "") for the first O dtype cuDNN builds, or (None, every dtype's reason). The O dtype
    that last built on this device is tried first: each declined build costs a graph build and a
    warning from the frontend."""
    tries = [out_dtype] + ([torch.float16] if out_dtype == torch.bfloat16 else []) + [torch.float8_e4m3fn]
    known = _O_DTYPE.get((device.index, out_dtype))
    if known in tries:
        tries.remove(known)
        tries.insert(0, known)
    errors = []
    for dtype in tries:
        try:
            g = build_graph(cudnn, device, b, h, s, d, dtype, scale)
            _O_DTYPE[(device.index, out_dtype)] = dtype
            return g, ""
        except torch.OutOfMemoryError:  # not cuDNN declining this O dtype: no fallback to a coarser one
            raise
        except Exception as e:
            errors.append(f"{str(dtype).replace('torch.', '')} output: {type(e).__name__}: {_first_line(e)}")
            log.debug("cuDNN sdpa_fp8 graph with a %s output declined: %s", dtype, e)
    return None, "; ".join(errors)


def graph_for(cudnn, device, b, h, s, d, out_dtype, scale) -> Fp8Graph:
    """The cached graph for this shape; raises KernelError naming the shape and cuDNN's reason.

    O is declared `out_dtype`; where cuDNN declines a bf16 O (the frontend's own tests of sdpa_fp8
    bind fp16 and FP8 outputs only), an fp16 O, else an e4m3 O is built instead and `execute` converts
    it, which the log line says. An e4m3 O adds its rounding (3 mantissa bits) to the error:
    reference.fp8_tensor_reference(out_fp8=True) is that recipe."""
    key = (device.index, b, h, s, d, out_dtype, float(scale))
    g = _GRAPHS.get(key)
    if g is None:
        with _LOCK:
            g = _GRAPHS.get(key)
            if g is None:
                g, why = _build_first(cudnn, device, b, h, s, d, out_dtype, scale)
                if g is None:  # kept as the refusal's text: a declined shape is not rebuilt at every call
                    g = _GRAPHS[key] = (
                        f"cuDNN {_version_or_unknown(cudnn)} cannot build its FP8 attention graph for B={b} H={h} "
                        f"S={s} D={d} ({why}). Set self_attn_1_type to sage_attn2 (our 8-bit kernel) or torch_sdpa.")
                    raise KernelError(g)
                _GRAPHS[key] = g
                log.info("attention: cuDNN sdpa_fp8 graph for B=%d H=%d S=%d D=%d built (%s)%s", b, h, s, d, g.plan,
                         "" if g.out_dtype == out_dtype else f"; O in {g.out_dtype}, converted to {out_dtype}")
    if isinstance(g, str):
        raise KernelError(g)
    return g


def probe(cudnn, device: torch.device, d: int, dtype: torch.dtype) -> str | None:
    """Whether cuDNN serves FP8 attention at head dim `d` with a `dtype` output here (None: it does)."""
    key = (device.index, 1, 1, PROBE_TOKENS, d, dtype, d ** -0.5)
    if key in _GRAPHS:  # a graph, or graph_for's refusal text for this very shape
        return _GRAPHS[key] if isinstance(_GRAPHS[key], str) else None
    with _LOCK:
        g, why = _build_first(cudnn, device, 1, 1, PROBE_TOKENS, d, dtype, d ** -0.5)
        if g is None:
            return f"cuDNN {_version_or_unknown(cudnn)} declines its FP8 attention graph at head dim {d} ({why})"
        _GRAPHS[key] = g
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no message"


def _version_or_unknown(cudnn) -> str:
    try:
        return backend_version(cudnn)
    except Exception:
        return "(version unknown)"


def execute(cudnn, x, scale: float, out: torch.Tensor) -> torch.Tensor:
    """Run the cached graph on fp8_qkv's tensors `x`; writes `out` [B, S, H, D] contiguous."""
    b, s, h, d = x.q8.shape
    g = graph_for(cudnn, x.q8.device, b, h, s, d, out.dtype, scale)
    handle = _handle(cudnn, x.q8.device)
    c = _constants(x.q8.device)
    u = g.uids
    o = out if g.out_dtype == out.dtype else torch.empty(out.shape, device=out.device, dtype=g.out_dtype)
    fp8_o = g.out_dtype == torch.float8_e4m3fn
    if fp8_o:  # O in units of 2·V's scale (module doc); fresh [1, 4] tensors: 16-byte aligned
        o_unit = x.scales[2:3] * 2.0
        scale_o = o_unit.reciprocal()
    else:
        scale_o = c[2:3]
    pack = {u["q"]: x.q8, u["k"]: x.k8, u["v"]: x.v8, u["o"]: o, u["amax_o"]: g.amax_o[:1],
            u["descale_q"]: x.scales[0, :1], u["descale_k"]: x.scales[1, :1], u["descale_v"]: x.scales[2, :1],
            u["descale_s"]: c[0, :1], u["scale_s"]: c[1, :1], u["scale_o"]: scale_o[0, :1]}
    with _EXEC_LOCK:  # the handle is shared: its stream and the launch must be one step
        cudnn.set_stream(handle, torch.cuda.current_stream(x.q8.device).cuda_stream)
        g.graph.execute(pack, g.workspace, handle=handle)
    if o is not out:
        out.copy_(o)  # e4m3 values are exact in bf16/fp16, so the one rounding is the multiply's
        if fp8_o:
            out.mul_(o_unit[0, :1])
    return out


def attention_fp8(cudnn, q, k, v, scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale) v on [B, S, H, D] tensors through our quantize and cuDNN's sdpa_fp8."""
    from .fp8_qkv import quantize_fp8
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    x = quantize_fp8(q, k, v)
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    return execute(cudnn, x, scale, out)
