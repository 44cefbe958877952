"""Fused forward for diffusers' WanTransformerBlock with quantized linears (GPU).

Why: in a quantized Wan block the 8-bit GEMMs are fast, and what is left is elementwise work that
diffusers runs as many small eager kernels (fp32 LayerNorm, modulation, casts, q/k RMSNorm, a
float64 rotary embedding, gated residuals), plus one activation quantization per linear. This
forward produces each linear's 8-bit input inside the kernel that already produces it:

  norm1 + modulation + quantize       -> shared by to_q, to_k, to_v (one quantization, not three)
  q/k RMSNorm + rotary embedding       -> one kernel each
  residual*gate + norm2 + quantize     -> attn2.to_q
  residual + norm3 + modulation + quantize -> ffn.net.0
  GELU + quantize                      -> ffn.net.2
  residual*gate                        -> the block's output

`install_fused_wan(model)` switches every WanTransformerBlock to this forward (the class of each
block becomes a subclass: weights, names and state dicts are unchanged). A block falls back to
diffusers' own forward when it cannot take the fused path: on CPU, without Triton, for per-token
modulation (Wan2.2 TI2V), or when its linears are not 8-bit QuantLinear layers sharing one kind
of quantized activation. `uninstall_fused_wan` restores the original class.
"""
from __future__ import annotations

import logging

import torch

from .attention.install import self_attention_choice
from .linear import QuantLinear

log = logging.getLogger("engine.fused")

try:
    from .kernels import ops
except ImportError:  # no triton: every block keeps diffusers' forward
    ops = None
try:
    from diffusers.models.attention_dispatch import dispatch_attention_fn
except ImportError:
    dispatch_attention_fn = None

_SUBCLASSES: dict[type, type] = {}
# i2v cross-attention context is [image tokens, text tokens]; diffusers' WanAttnProcessor splits it by
# taking the last 512 as text (the pipelines pad every prompt to max_sequence_length=512). Neither the
# model nor its config records the split, so the fused forward follows diffusers' rule to the token;
# tests/test_fused_vs_diffusers.py fails if diffusers' block and this forward stop agreeing.
TEXT_TOKENS = 512


def _fused_layers(block):
    a1, a2, ffn = block.attn1, block.attn2, block.ffn.net
    return [a1.to_q, a1.to_k, a1.to_v, a1.to_out[0], a2.to_q, a2.to_out[0], ffn[0].proj, ffn[2]]


def fused_plan(block, device: torch.device):
    """(activation kind, row padding) shared by all fused linears of `block`, or the reason not."""
    if ops is None:
        return None, "triton is not installed"
    if device.type != "cuda":
        return None, "fused kernels run on CUDA only"
    if getattr(block.attn1, "fused_projections", False) or getattr(block.attn2, "fused_projections", False):
        return None, "diffusers' fused projections are on"
    if type(getattr(block.ffn.net[0], "approximate", None)) is not str or block.ffn.net[0].approximate != "tanh":
        return None, "the feed-forward activation is not tanh-GELU"
    head_dim = block.attn1.to_q.out_features // block.attn1.heads
    if head_dim & (head_dim - 1):
        return None, f"head dim {head_dim} is not a power of two (the q/k norm + rotary kernel needs one)"
    plans = set()
    for layer in _fused_layers(block):
        if not isinstance(layer, QuantLinear):
            return None, "a linear layer is not quantized"
        kernel = layer.kernel_for(device)
        kind = kernel.act_kind(layer)
        if kind is None:
            return None, f"kernel {kernel.name} for {layer.fmt} takes no pre-quantized activation"
        plans.add((kind, kernel.row_pad(layer)))
    if len(plans) != 1:
        return None, f"linears want different activation kinds {sorted(plans)}"
    return plans.pop(), None


def _eps(norm) -> float:
    return norm.eps if norm.eps is not None else torch.finfo(torch.float32).eps


def _linear_q(layer, q, s, rows, dtype):
    return layer.kernel_for(q.device).forward_quantized(layer, q, s, rows, dtype)


def _rope_tables(rotary_emb, s_len, head_dim):
    cos, sin = rotary_emb
    return (cos.reshape(-1, head_dim)[:s_len].float().contiguous(),
            sin.reshape(-1, head_dim)[:s_len].float().contiguous())


def _attention(attn, query, key, value, self_attention=False, parallel_config=None):
    """[B, S, H, Dh] (often a permuted view: the quantizer reads it in place). Self-attention takes
    the path engine.attention.install_attention put on attn1 (8-bit unless a bf16 step/block); under
    context parallelism (engine/parallel) it goes through diffusers' dispatch, which does the exchange."""
    q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
    choice = self_attention_choice(attn) if self_attention and parallel_config is None else None
    if choice is not None and choice.wants_8bit():
        return choice.run(q, k, v).type_as(query)
    out = dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                                backend=getattr(attn.processor, "_attention_backend", None),
                                parallel_config=parallel_config)
    return out.type_as(query)


def fused_block_forward(block, hidden_states, encoder_hidden_states, temb, rotary_emb, plan):
    (kind, pad) = plan
    b, s_len, d = hidden_states.shape
    rows, dtype = b * s_len, hidden_states.dtype
    hidden_states = hidden_states.contiguous()
    shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + temb.float()).chunk(6, dim=1)

    # 1. self-attention: one quantized norm1 output feeds q, k and v
    a1 = block.attn1
    _, q8, s8 = ops.norm_quant(hidden_states, None, None, None, None, shift, scale, kind,
                               block.norm1.eps, pad, True)
    query, key, value = (_linear_q(l, q8, s8, rows, dtype).view(b, s_len, -1) for l in (a1.to_q, a1.to_k, a1.to_v))
    head_dim = query.shape[-1] // a1.heads
    cos, sin = _rope_tables(rotary_emb, s_len, head_dim) if rotary_emb is not None else (None, None)
    query = ops.rmsnorm_rope(query, a1.norm_q.weight, _eps(a1.norm_q), head_dim, cos, sin)
    key = ops.rmsnorm_rope(key, a1.norm_k.weight, _eps(a1.norm_k), head_dim, cos, sin)
    # context parallelism (engine/parallel): self-attention only, as diffusers' WanAttnProcessor does
    out = _attention(a1, query, key, value, self_attention=True,
                     parallel_config=getattr(a1.processor, "_parallel_config", None))
    q8, s8 = ops.quantize_heads(out, kind, pad)
    attn_out = _linear_q(a1.to_out[0], q8, s8, rows, dtype).view(b, s_len, d)

    # 2. cross-attention: residual*gate + norm2 + quantize feeds attn2.to_q
    a2 = block.attn2
    norm2 = block.norm2
    has_norm = isinstance(norm2, torch.nn.LayerNorm)
    hidden_states, q8, s8 = ops.norm_quant(
        hidden_states, attn_out, gate, norm2.weight if has_norm else None, norm2.bias if has_norm else None,
        None, None, kind, norm2.eps if has_norm else 0.0, pad, has_norm)
    query = _linear_q(a2.to_q, q8, s8, rows, dtype).view(b, s_len, -1)
    query = ops.rmsnorm_rope(query, a2.norm_q.weight, _eps(a2.norm_q), head_dim, None, None)
    context = encoder_hidden_states
    out_img = None
    if a2.add_k_proj is not None:  # image-to-video: image tokens first, then the text tokens
        n_img = context.shape[1] - TEXT_TOKENS
        img, context = context[:, :n_img], context[:, n_img:]
        key_img = a2.norm_added_k(a2.add_k_proj(img))
        out_img = _attention(a2, query, key_img, a2.add_v_proj(img))
    key = a2.norm_k(a2.to_k(context))
    out = _attention(a2, query, key, a2.to_v(context))
    if out_img is not None:
        out = out + out_img
    q8, s8 = ops.quantize_heads(out, kind, pad)
    attn_out = _linear_q(a2.to_out[0], q8, s8, rows, dtype).view(b, s_len, d)

    # 3. feed-forward: residual + norm3 + modulation + quantize; GELU + quantize between the linears
    hidden_states, q8, s8 = ops.norm_quant(hidden_states, attn_out, None, None, None, c_shift, c_scale, kind,
                                           block.norm3.eps, pad, True)
    ffn = block.ffn.net
    h = _linear_q(ffn[0].proj, q8, s8, rows, dtype)
    q8, s8 = ops.quantize_rows(h, kind, True, pad)
    ff = _linear_q(ffn[2], q8, s8, rows, dtype).view(b, s_len, d)
    return ops.gated_residual(hidden_states, ff, c_gate)


def _fused_subclass(cls):
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb):
            plan = None
            if temb.ndim == 3:
                # plain attributes, no dict methods: torch.compile traces this (the plan is
                # normally made at install time, outside any compiled region)
                if self.__dict__.get("_fused_device") != hidden_states.device:
                    _make_plan(self, hidden_states.device)
                plan = self.__dict__.get("_fused_plan")
            if plan is None:
                return cls.forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb)
            return fused_block_forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb, plan)

        # same class name: diffusers and accelerate match blocks by name (`_repeated_blocks` for
        # compile_repeated_blocks, `_no_split_modules` for device maps)
        sub = type(cls.__name__, (cls,), {"forward": forward, "_unfused_class": cls,
                                           "__qualname__": f"fused.{cls.__qualname__}"})
        _SUBCLASSES[cls] = sub
    return sub


def _make_plan(block, device):
    plan, why = fused_plan(block, device)
    if why:
        log.info("Wan block on %s keeps diffusers' forward: %s", device, why)
    block.__dict__["_fused_plan"] = plan
    block.__dict__["_fused_device"] = device


def install_fused_wan(model) -> int:
    """Give every WanTransformerBlock of `model` the fused forward; returns how many blocks.

    Call it after the model is on its GPU (and quantized): the kernels are chosen here, so that a
    later torch.compile (e.g. diffusers' compile_repeated_blocks) finds the plan made."""
    count = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ == "WanTransformerBlock" and getattr(cls, "_unfused_class", None) is None:
            module.__class__ = _fused_subclass(cls)
        elif getattr(cls, "_unfused_class", None) is None:
            continue
        device = module.scale_shift_table.device
        _make_plan(module, torch.device(device.type, torch.cuda.current_device())
                   if device.type == "cuda" and device.index is None else device)
        count += 1
    return count


def uninstall_fused_wan(model) -> int:
    count = 0
    for module in model.modules():
        original = getattr(type(module), "_unfused_class", None)
        if original is not None:
            module.__class__ = original
            count += 1
    return count
