"""Putting the chosen attention into a Wan transformer: attn1 (self-attention) only.

`install_attention(model, plan)` gives each WanTransformerBlock's attn1 a `SelfAttentionChoice`
(read by engine/fused.py's fused block) and, for diffusers' own forward, a processor that runs
the same self-attention math as diffusers' WanAttnProcessor with the 8-bit path in place of
`dispatch_attention_fn`, and hands every other call (cross-attention, masks, context parallel,
a bf16 step or block) to the original processor unchanged.
"""
from __future__ import annotations

import logging

import torch

from .paths import explain, select_path
from .plan import AttentionPlan

log = logging.getLogger("engine.attention")


class SelfAttentionChoice:
    """Per block: whether attn1 runs 8-bit now, and the path that runs it on each device."""

    def __init__(self, plan: AttentionPlan, block_index: int):
        self.plan, self.block_index = plan, block_index
        self._paths: dict = {}

    def wants_8bit(self) -> bool:
        return self.plan.eightbit_for(self.block_index)

    def run(self, q, k, v) -> torch.Tensor:
        """q, k, v [B, S, H, D] -> [B, S, H, D] through the plan's family on q's device."""
        key = (q.device, q.shape[-1], q.dtype)
        path = self._paths.get(key)
        if path is None:
            path = self._paths[key] = select_path(self.plan.self_attn, q.device, q.shape[-1], q.dtype)
            if self.block_index == 0:
                # the faster paths of the family that declined, with why: no silent step down
                passed = []
                for name, why in explain(self.plan.self_attn, q.device, q.shape[-1], q.dtype):
                    if name == path.name:
                        break
                    passed.append(f"{name}: {why}")
                log.info("attention: self-attention runs %s (%s) on %s%s", path.name, path.describe, q.device,
                         f"; not {'; '.join(passed)}" if passed else "")
        return path.run(q, k, v)


def _rotary(x, cos, sin):
    # diffusers' Wan rotary embedding on [B, S, H, D] with its [1, S, 1, D] interleaved tables
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class EightBitSelfAttnProcessor:
    """attn1's processor while 8-bit self-attention is installed; wraps diffusers' original."""

    def __init__(self, original, choice: SelfAttentionChoice):
        self.__dict__["original"] = original
        self.__dict__["choice"] = choice

    # diffusers' set_attention_backend / context parallel set these on processors: keep them on
    # the original, which runs every call this one hands back
    def __getattr__(self, name):
        return getattr(self.__dict__["original"], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["original"], name, value)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        original = self.__dict__["original"]
        if (encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None
                or getattr(original, "_parallel_config", None) is not None or getattr(attn, "fused_projections", False)
                or not self.choice.wants_8bit()):
            return original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rotary(query, *rotary_emb), _rotary(key, *rotary_emb)
        out = self.choice.run(query, key, value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _blocks(model):
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return [m for m in model.modules() if type(m).__name__ == "WanTransformerBlock"
                or type(getattr(type(m), "_unfused_class", None)).__name__ == "WanTransformerBlock"]
    return list(blocks)


def install_attention(model, plan: AttentionPlan) -> int:
    """Apply `plan` to every block's attn1 of a diffusers Wan transformer; returns how many 8-bit.

    With the bf16 plan it removes an earlier installation. Raises KernelError (every path's
    reason) when the model sits on a device no 8-bit path can run on."""
    count = 0
    for index, block in enumerate(_blocks(model)):
        attn = block.attn1
        proc = attn.processor
        if isinstance(proc, EightBitSelfAttnProcessor):
            attn.set_processor(proc.__dict__["original"])
        attn.__dict__.pop("_eightbit", None)
        if plan.self_attn == "sdpa":
            continue
        choice = SelfAttentionChoice(plan, index)
        weight = attn.to_q.weight
        if weight.device.type == "cuda":
            select_path(plan.self_attn, weight.device, attn.to_q.out_features // attn.heads, weight.dtype
                        if weight.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16)
        attn.__dict__["_eightbit"] = choice
        attn.set_processor(EightBitSelfAttnProcessor(attn.processor, choice))
        count += 1
    return count


def self_attention_choice(attn) -> SelfAttentionChoice | None:
    """The installed choice of a block's attn1 (None: bf16 as diffusers would run it)."""
    return attn.__dict__.get("_eightbit")


def install_for_pipeline(pipe, cfg) -> AttentionPlan:
    """Read the attention keys of `cfg` (QuantConfig or dict) and install them on every Wan
    transformer of a diffusers pipeline (`transformer`, and Wan2.2's `transformer_2`)."""
    from .plan import plan_from_config
    plan = cfg if isinstance(cfg, AttentionPlan) else plan_from_config(cfg)
    for name in ("transformer", "transformer_2"):
        model = getattr(pipe, name, None)
        if model is not None:
            install_attention(model, plan)
    return plan
