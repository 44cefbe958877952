"""Which attention runs where: LightX2V's config keys, the bf16 step/block exclusions, and the
denoising-step context the generate loop sets.

Keys (read with cfg.get; cfg is a QuantConfig or a plain dict):
  self_attn_1_type      self-attention (attn1): torch_sdpa | flash_attn2 | flash_attn3 -> bf16 SDPA;
                        sage_attn2 | sage_attn3 -> our 8-bit attention; cudnn_fp8 (ours, not a
                        LightX2V value) -> cuDNN's FP8 attention with smoothed K (Hopper+)
  cross_attn_1_type     text cross-attention (attn2), and
  cross_attn_2_type     its image branch (I2V): accepted with the same values; always bf16 SDPA
                        (512 text tokens: the 8-bit path does not pay there), said in the log line
  attn_bf16_first_steps bf16 attention for the first N denoising steps (default 0)
  attn_bf16_last_steps  ... and for the last N (default 0)
  attn_bf16_blocks      list of block indices that always use bf16 attention (default [])
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..errors import ConfigError

log = logging.getLogger("engine.attention")

# LightX2V's names -> our families. flash_attn2/3 are not installed here: torch's SDPA runs the
# same bf16 math through cuDNN (on Hopper) or its own flash kernel. sage_attn3 is FP4 on Blackwell
# in LightX2V; ours is the 8-bit recipe on every FP8-capable GPU.
ATTN_TYPES = {"torch_sdpa": "sdpa", "flash_attn2": "sdpa", "flash_attn3": "sdpa",
              "sage_attn2": "sage8", "sage_attn3": "sage8", "cudnn_fp8": "cudnn_fp8"}
# what each family computes, for the one log line
DESCRIBE = {"sdpa": "bf16 SDPA", "sage8": "8-bit (INT8 Q·Kᵀ, FP8 P·V)",
            "cudnn_fp8": "FP8 (cuDNN sdpa_fp8, per-tensor scales, smoothed K)"}
CONFIG_KEYS = ("self_attn_1_type", "cross_attn_1_type", "cross_attn_2_type",
               "attn_bf16_first_steps", "attn_bf16_last_steps", "attn_bf16_blocks")


@dataclass(frozen=True)
class AttentionPlan:
    self_attn: str = "sdpa"  # family for attn1 (a value of ATTN_TYPES)
    bf16_first_steps: int = 0
    bf16_last_steps: int = 0
    bf16_blocks: frozenset = field(default_factory=frozenset)
    source: str = "default"

    def eightbit_for(self, block_index: int | None) -> bool:
        """Whether attn1 of block `block_index` runs 8-bit at the current denoising step."""
        if self.self_attn == "sdpa" or (block_index is not None and block_index in self.bf16_blocks):
            return False
        if not (self.bf16_first_steps or self.bf16_last_steps):
            return True
        index, total = _STEP
        if index is None:
            _warn_no_step(self)
            return True
        return self.bf16_first_steps <= index < total - self.bf16_last_steps


def _name(cfg, key, source) -> str:
    value = cfg.get(key)
    if value is None:
        return "torch_sdpa"
    if not isinstance(value, str) or value not in ATTN_TYPES:
        raise ConfigError(f"{source}: `{key}` is {value!r}; valid values: {', '.join(ATTN_TYPES)}")
    return value


def _count(cfg, key, source) -> int:
    value = cfg.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: `{key}` must be a whole number of steps >= 0, got {value!r}")
    return value


def plan_from_config(cfg, source: str | None = None, announce: bool = True) -> AttentionPlan:
    """Read the attention keys from a QuantConfig (or dict); logs one line saying what runs (`announce`:
    off for checks that only read the plan, e.g. before a download, so the line appears once per install)."""
    source = source or getattr(cfg, "source", "<config>")
    self_type = _name(cfg, "self_attn_1_type", source)
    cross = [(k, _name(cfg, k, source)) for k in ("cross_attn_1_type", "cross_attn_2_type")]
    blocks = cfg.get("attn_bf16_blocks", []) or []
    if not isinstance(blocks, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0
                                               for b in blocks):
        raise ConfigError(f"{source}: `attn_bf16_blocks` must be a list of block indices (e.g. [0, 39]), "
                          f"got {blocks!r}")
    plan = AttentionPlan(ATTN_TYPES[self_type], _count(cfg, "attn_bf16_first_steps", source),
                         _count(cfg, "attn_bf16_last_steps", source), frozenset(blocks), source)
    if not announce:
        return plan
    what = DESCRIBE[plan.self_attn]
    extra = ""
    if plan.self_attn != "sdpa" and (plan.bf16_first_steps or plan.bf16_last_steps or plan.bf16_blocks):
        extra = (f"; bf16 for the first {plan.bf16_first_steps} and last {plan.bf16_last_steps} steps"
                 f"{' and blocks ' + str(sorted(plan.bf16_blocks)) if plan.bf16_blocks else ''}")
    cross_note = ", ".join(f"{k}={v}" for k, v in cross if v != "torch_sdpa")
    log.info("attention: self-attention %s=%s -> %s%s; cross-attention bf16 SDPA%s", "self_attn_1_type",
             self_type, what, extra, f" ({cross_note}: 8-bit does not pay on 512 text tokens)" if cross_note else "")
    return plan


# ---- the denoising step, set by the generate loop -------------------------------------------
_STEP: tuple[int | None, int | None] = (None, None)
_WARNED: set = set()


def set_denoising_step(index: int | None, total: int | None = None) -> None:
    """Tell the attention which denoising step runs (0-based) out of `total`; None clears it."""
    global _STEP
    _STEP = (index, total) if index is not None else (None, None)


def current_step() -> tuple[int | None, int | None]:
    return _STEP


@contextmanager
def denoising_steps(total: int):
    """Around a diffusers pipeline call: sets step 0 of `total` and yields a
    `callback_on_step_end` that advances the step after each one; clears it on exit."""
    set_denoising_step(0, total)

    def on_step_end(pipe, i, t, callback_kwargs):
        set_denoising_step(i + 1, total)
        return callback_kwargs

    try:
        yield on_step_end
    finally:
        set_denoising_step(None)


def _warn_no_step(plan):
    if plan.source not in _WARNED:
        _WARNED.add(plan.source)
        log.warning("attn_bf16_first_steps/attn_bf16_last_steps are set (%s) but the generate loop did not "
                    "report the denoising step (engine.attention.denoising_steps); 8-bit runs on every step",
                    plan.source)
