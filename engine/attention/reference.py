"""CPU reference that defines the numerics of our 8-bit attention, and plain float64 attention.

Layout everywhere: [B, S, H, D] (diffusers' attention calls). The 8-bit recipe (SageAttention2's,
from its paper):

- K smoothing: subtract K's per-channel mean over tokens (per batch and head). Every score of one
  query row moves by the same q·mean, which softmax cancels, so this is exact in real arithmetic;
  it removes the shared offset real keys carry, which would otherwise eat the INT8 range.
- Q and K in INT8 (round half away from zero, clamp ±127) with one scale per block of tokens per
  head: `block_q` tokens of Q (the kernel's BLOCK_M), `block_k` tokens of K. Or, `k_lanes`, one
  scale per lane group of K: in every 128 tokens, the 32 tokens n with the same (n % 8) // 2, which
  are the keys one thread holds in Hopper's matrix-instruction layout (SageAttention2's per-thread
  granularity), so the kernel applies K's scale once per thread instead of once per score.
- Scores s = (q8·k8) · sq · sk in FP32; online softmax over key blocks of `block_n` (the kernel's
  BLOCK_N): running max m, p = exp(s - m) ≤ 1, running sum l of the FP32 p.
- P·V: p in FP8 e4m3 as p·448 (p ≤ 1, so 448 = e4m3's largest finite is the full range), V in FP8
  with one scale per channel (amax over tokens / 448), FP32 accumulation; out = acc / l · sv / 448.
  With `sum_fp8_p`, l sums the FP8-rounded p instead (see Recipe).

`fp8_tensor_reference` defines the second recipe, the cuDNN `sdpa_fp8` path's (engine/attention/
cudnn_fp8.py): the same K smoothing, then Q, K, V in FP8 e4m3 with one scale per tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

P_SCALE = 448.0  # FP8 e4m3 largest finite
FP8 = torch.float8_e4m3fn


def attention_f64(q, k, v, scale: float | None = None) -> torch.Tensor:
    """Plain softmax(q kᵀ · scale) v in float64; [B, S, H, D] in and out."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    w = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return (w @ v).transpose(1, 2)


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def quantize_int8_blocks(x: torch.Tensor, block: int):
    """x [B, S, H, D] float -> (int8 values [B, S, H, D] as float, scales [B, ceil(S/block), H])."""
    b, s, h, d = x.shape
    nb = math.ceil(s / block)
    xp = torch.zeros(b, nb * block, h, d, dtype=x.dtype)
    xp[:, :s] = x
    amax = xp.view(b, nb, block, h, d).abs().amax(dim=(2, 4))
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = round_half_away(xp.view(b, nb, block, h, d) / scale[:, :, None, :, None]).clamp(-127, 127)
    return q.view(b, nb * block, h, d)[:, :s], scale


LANE_BLOCK = 128  # tokens per K block of the lane groups (the quantize launch's and the kernels' block)


def lane_group(n: torch.Tensor) -> torch.Tensor:
    """The K scale group of token n: (block of 128, lane group (n % 8) // 2), as one index."""
    return n // LANE_BLOCK * 4 + (n % 8) // 2


def quantize_int8_lanes(x: torch.Tensor):
    """x [B, S, H, D] float -> (int8 values as float, per-token scales [B, S, H]) with one scale per
    lane group (lane_group): each token's scale is its group's amax / 127."""
    b, s, h, d = x.shape
    nb = math.ceil(s / LANE_BLOCK)
    amax_tok = torch.zeros(b, nb * LANE_BLOCK, h, dtype=x.dtype)
    amax_tok[:, :s] = x.abs().amax(dim=3)
    per_group = amax_tok.view(b, nb, LANE_BLOCK // 8, 4, 2, h).amax(dim=(2, 4), keepdim=True)
    amax = per_group.expand(b, nb, LANE_BLOCK // 8, 4, 2, h).reshape(b, nb * LANE_BLOCK, h)[:, :s]
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    return round_half_away(x / scale[..., None]).clamp(-127, 127), scale


def quantize_fp8_channels(v: torch.Tensor):
    """v [B, S, H, D] -> (e4m3 values as float [B, S, H, D], scales [B, H, D])."""
    amax = v.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / P_SCALE, torch.ones_like(amax))
    return (v / scale[:, None]).to(FP8).to(v.dtype), scale


@dataclass
class Recipe:
    block_q: int = 1
    block_k: int = 1
    block_n: int = 64
    smooth_k: bool = True
    k_lanes: bool = False  # K scales per lane group (quantize_int8_lanes); block_k is then unused
    # l = the row sum of the FP8-rounded P (dequantized) instead of the FP32 P: P·V / l is then an
    # exact weighted mean of V, so P values that underflow FP8 (p < ~2e-6) leave V's mean intact
    sum_fp8_p: bool = False


# the "sage8" family's recipe (engine/attention/paths.py): every path of the family computes this
SAGE8 = Recipe(block_n=128, k_lanes=True)


def sage_quantize(q, k, v, recipe: Recipe = Recipe()):
    """The 8-bit copies the recipe defines, in float64: (q8, sq, k8, sk, v8, sv), [B, S, H, D] values
    with scales [B, blocks, H] for q and k and [B, H, D] for v."""
    q, k, v = (t.double() for t in (q, k, v))
    if recipe.smooth_k:
        k = k - k.mean(dim=1, keepdim=True)
    kq = quantize_int8_lanes(k) if recipe.k_lanes else quantize_int8_blocks(k, recipe.block_k)
    return (*quantize_int8_blocks(q, recipe.block_q), *kq, *quantize_fp8_channels(v))


def sage_attend(q8, sq, k8, sk, v8, sv, scale: float | None = None, recipe: Recipe = Recipe()) -> torch.Tensor:
    """Attention over given 8-bit copies (sage_quantize's layout), exactly as our kernel computes it."""
    b, s_q, h, d = q8.shape
    s_k = k8.shape[1]
    scale = d ** -0.5 if scale is None else scale
    # per-token scales, heads first: [B, H, S]
    sq_t = sq.repeat_interleave(recipe.block_q, dim=1)[:, :s_q].transpose(1, 2) * scale
    sk_t = sk.repeat_interleave(1 if recipe.k_lanes else recipe.block_k, dim=1)[:, :s_k].transpose(1, 2)
    q8, k8, v8 = (t.transpose(1, 2) for t in (q8, k8, v8))  # [B, H, S, D]
    m = torch.full((b, h, s_q), -math.inf, dtype=torch.float64)
    l = torch.zeros(b, h, s_q, dtype=torch.float64)
    acc = torch.zeros(b, h, s_q, d, dtype=torch.float64)
    for start in range(0, s_k, recipe.block_n):
        sl = slice(start, min(start + recipe.block_n, s_k))
        # int8 products summed in int32 are exact; float64 holds them exactly too
        s = (q8 @ k8[:, :, sl].transpose(-1, -2)) * sq_t[..., None] * sk_t[:, :, None, sl]
        s = s.float().double()  # the kernel forms scores in FP32
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        p8 = (p * P_SCALE).float().to(FP8).double()
        l = l * alpha + (p8.sum(dim=-1) / P_SCALE if recipe.sum_fp8_p else p.sum(dim=-1))
        acc = acc * alpha[..., None] + p8 @ v8[:, :, sl]
        m = m_new
    out = acc / l[..., None] * (sv[:, :, None, :] / P_SCALE)
    return out.transpose(1, 2)


def sage_reference(q, k, v, scale: float | None = None, recipe: Recipe = Recipe()) -> torch.Tensor:
    """The 8-bit attention exactly as our kernel defines it, in float64 on the CPU."""
    return sage_attend(*sage_quantize(q, k, v, recipe), scale=scale, recipe=recipe)


def quantize_fp8_tensor(x: torch.Tensor, amax: torch.Tensor | None = None):
    """One e4m3 scale for the whole tensor (amax / 448): (values as float, scale as a 0-d tensor).
    `amax` may be given (the kernel's, from its statistics pass); values are clamped to ±448."""
    amax = x.abs().amax() if amax is None else amax
    scale = torch.where(amax > 0, amax / P_SCALE, torch.ones_like(amax))
    return (x / scale).clamp(-P_SCALE, P_SCALE).float().to(FP8).to(x.dtype), scale


def fp8_tensor_reference(q, k, v, scale: float | None = None, block_n: int = 128, smooth_k: bool = True,
                         out_fp8: bool = False):
    """Per-tensor FP8 attention (the numerics of the cuDNN `sdpa_fp8` path) in float64 on the CPU.

    K smoothed by its per-channel token mean (per batch and head, as sage_reference); Q, smoothed K
    and V each in e4m3 with one scale per tensor; scores (q8·k8)·sq·sk·scale; online softmax over
    key blocks of `block_n` with the FP32 P summed into l; P·V with P in e4m3 as p·448 (cuDNN's
    scale_s = 448, descale_s = 1/448) and FP32 accumulation; out = acc / l · sv / 448.
    out_fp8: O rounded to e4m3 in units of 2·sv before the final · 2·sv (cuDNN's FP8 output, the one
    it serves on Hopper, as cudnn_fp8 asks for it: scale_o = 1 / (2·sv))."""
    q, k, v = (t.double() for t in (q, k, v))
    b, s_q, h, d = q.shape
    s_k = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    if smooth_k:
        k = k - k.mean(dim=1, keepdim=True)
    (q8, sq), (k8, sk), (v8, sv) = (quantize_fp8_tensor(t) for t in (q, k, v))
    q8, k8, v8 = (t.transpose(1, 2) for t in (q8, k8, v8))  # [B, H, S, D]
    m = torch.full((b, h, s_q), -math.inf, dtype=torch.float64)
    l = torch.zeros(b, h, s_q, dtype=torch.float64)
    acc = torch.zeros(b, h, s_q, d, dtype=torch.float64)
    for start in range(0, s_k, block_n):
        sl = slice(start, min(start + block_n, s_k))
        s = ((q8 @ k8[:, :, sl].transpose(-1, -2)) * (sq * sk * scale)).float().double()
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        l = l * alpha + p.sum(dim=-1)
        acc = acc * alpha[..., None] + (p * P_SCALE).float().to(FP8).double() @ v8[:, :, sl]
        m = m_new
    o = acc / l[..., None] / P_SCALE
    if out_fp8:
        o = (o / 2).float().to(FP8).double() * 2
    return (o * sv).transpose(1, 2)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm()).item()


def wan_like_qkv(b: int, s: int, h: int, d: int = 128, *, seed: int = 0, device="cpu",
                 dtype=torch.bfloat16, k_offset: float = 4.0, sharpness: float = 2.0):
    """q, k, v [B, S, H, D] that look like Wan's self-attention inputs: RMSNorm over the full width
    with a learned-looking weight, then rotary embedding; K carries a shared per-channel offset
    (as trained keys do), q/k weights scaled so that attention is peaked rather than uniform."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32)

    width = h * d
    offset = randn(width) * k_offset
    shared = randn(b, s, width)  # a common component makes some q·k large: peaked rows

    def normed(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    q = normed(shared + randn(b, s, width), (1 + 0.2 * randn(width)) * sharpness).view(b, s, h, d)
    k = normed(shared + randn(b, s, width) + offset, (1 + 0.2 * randn(width)) * sharpness).view(b, s, h, d)
    v = randn(b, s, h, d)
    pos = torch.arange(s, device=device, dtype=torch.float32)
    freqs = 10000.0 ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    ang = pos[:, None] * freqs[None, :]  # [S, D/2]
    cos, sin = ang.cos()[None, :, None, :], ang.sin()[None, :, None, :]

    def rope(x):
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)

    return rope(q).to(dtype), rope(k).to(dtype), v.to(dtype)


# --- Recipe variants for the error budget (bench/attention_error_budget.py). Separate from the
# kernel's recipe above; every knob's default reproduces sage_reference with block_n = 128.

@dataclass
class Variant:
    qk: str = "int8"          # "int8" (block scales below) or "exact"
    block_q: int = 1
    block_k: int = 1
    block_n: int = 128
    smooth_k: bool = True
    p: str = "e4m3"           # "exact", "e4m3", "e5m2", "int8", "e4m3x2" (p8 + FP8 residual)
    p_row_scale: bool = False  # scale P per row by its block max instead of the fixed range
    v: str = "e4m3"           # "exact", "e4m3", "int8" (one scale per channel)
    smooth_v: bool = False    # subtract V's per-channel token mean before quantizing, add it back
    sum_fp8_p: bool = False   # l sums the rounded P
    smooth_q: bool = False    # subtract Q's per-head token mean; its q̄·k_j comes back as a per-key bias


def _round_p(p: torch.Tensor, fmt: str, row_scale: bool) -> torch.Tensor:
    """p in [0, 1] (FP32 in the kernel) -> its rounded copy in the same units."""
    if fmt == "exact":
        return p
    top = {"e4m3": P_SCALE, "e4m3x2": P_SCALE, "e5m2": 57344.0, "int8": 127.0}[fmt]
    if row_scale:  # the block's row max maps to the top of the range
        amax = p.amax(dim=-1, keepdim=True)
        s = top / torch.where(amax > 0, amax, torch.ones_like(amax))
    else:
        s = torch.full_like(p[..., :1], top)
    x = (p * s).float()
    if fmt == "int8":
        hi = round_half_away(x.double())
        return hi / s
    hi = x.to(torch.float8_e5m2 if fmt == "e5m2" else FP8).double()
    if fmt == "e4m3x2":
        # residual |r| <= half an e4m3 ulp of hi <= 16 for hi <= 448, so ×16 keeps it in range
        r = (x.double() - hi) * 16.0
        hi = hi + r.float().to(FP8).double() / 16.0
    return hi / s


def _round_v(v: torch.Tensor, fmt: str) -> torch.Tensor:
    if fmt == "exact":
        return v
    amax = v.abs().amax(dim=1, keepdim=True)
    top = 127.0 if fmt == "int8" else P_SCALE
    s = torch.where(amax > 0, amax / top, torch.ones_like(amax))
    x = v / s
    x = round_half_away(x) if fmt == "int8" else x.float().to(FP8).double()
    return x * s


def sage_variant(q, k, v, scale: float | None = None, var: Variant = Variant()) -> torch.Tensor:
    """The 8-bit attention with the recipe's parts switched per `var`, float64 on the CPU."""
    q, k, v = (t.double() for t in (q, k, v))
    b, s_q, h, d = q.shape
    s_k = k.shape[1]
    scale = d ** -0.5 if scale is None else scale
    if var.smooth_k:
        k = k - k.mean(dim=1, keepdim=True)
    v_mean = v.mean(dim=1, keepdim=True) if var.smooth_v else torch.zeros_like(v[:, :1])
    q_mean = q.mean(dim=1, keepdim=True) if var.smooth_q else torch.zeros_like(q[:, :1])
    bias = (q_mean * k).sum(-1).float().double().transpose(1, 2)[:, :, None, :]  # [B, H, 1, S_k], FP32
    q = q - q_mean
    if var.qk == "int8":
        q8, sq = quantize_int8_blocks(q, var.block_q)
        k8, sk = quantize_int8_blocks(k, var.block_k)
        q = q8 * sq.repeat_interleave(var.block_q, dim=1)[:, :s_q, :, None]
        k = k8 * sk.repeat_interleave(var.block_k, dim=1)[:, :s_k, :, None]
    v = _round_v(v - v_mean, var.v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
    m = torch.full((b, h, s_q), -math.inf, dtype=torch.float64)
    l = torch.zeros(b, h, s_q, dtype=torch.float64)
    acc = torch.zeros(b, h, s_q, d, dtype=torch.float64)
    for start in range(0, s_k, var.block_n):
        sl = slice(start, min(start + var.block_n, s_k))
        s = ((q @ k[:, :, sl].transpose(-1, -2) + bias[..., sl]) * scale).float().double()
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp(s - m_new[..., None])
        alpha = torch.exp(m - m_new)
        pr = _round_p(p, var.p, var.p_row_scale)
        l = l * alpha + (pr if var.sum_fp8_p else p).sum(dim=-1)
        acc = acc * alpha[..., None] + pr @ v[:, :, sl]
        m = m_new
    return (acc / l[..., None]).transpose(1, 2) + v_mean
