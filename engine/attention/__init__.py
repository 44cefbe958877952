"""Attention paths for Wan's self-attention: bf16 SDPA and our 8-bit path, chosen by config.

For the generate loop / builder:
    plan = install_for_pipeline(pipe, cfg)       # reads self_attn_1_type, attn_bf16_* (logs what runs),
                                                 # installs on pipe.transformer (+ transformer_2)
    with denoising_steps(num_steps) as on_step_end:
        pipe(..., callback_on_step_end=on_step_end)
"""
from .install import SelfAttentionChoice, install_attention, install_for_pipeline, self_attention_choice
from .paths import PATHS, AttentionPath, explain, register_path, select_path
from .plan import (ATTN_TYPES, CONFIG_KEYS, AttentionPlan, current_step, denoising_steps, plan_from_config,
                   set_denoising_step)

__all__ = ["ATTN_TYPES", "CONFIG_KEYS", "PATHS", "AttentionPath", "AttentionPlan", "SelfAttentionChoice",
           "current_step", "denoising_steps", "explain", "install_attention", "install_for_pipeline", "plan_from_config",
           "register_path", "select_path", "self_attention_choice", "set_denoising_step"]
