"""What `Parallel.apply` installs on a Wan transformer: diffusers' context parallelism, and a diffusers
ModelHook for CFG parallelism."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..errors import ParallelError

log = logging.getLogger("engine.parallel")
CFG_HOOK = "engine_cfg_parallel"
# Ring attention merges partial results with the log-sum-exp, which diffusers' default "native" backend
# does not return; PyTorch's flash SDPA kernel does (on CUDA, and on CPU for the tests).
RING_BACKEND = "_native_flash"


def enable_sequence_parallel(model, plan, mesh) -> None:
    from diffusers import ContextParallelConfig

    if plan.attn == "ring":
        current = _backend_of(model)
        if current in (None, "native"):
            model.set_attention_backend(RING_BACKEND)
            log.info("ring attention: attention backend %s -> %s (ring merges partial results with the "
                     "log-sum-exp, which the native backend does not return)", current or "native", RING_BACKEND)
    ring = plan.seq if plan.attn == "ring" else 1
    config = ContextParallelConfig(ring_degree=ring, ulysses_degree=plan.seq // ring, mesh=mesh)
    with _cpu_counts_as_one_device():
        model.enable_parallelism(config=config)
    eightbit = sum(1 for m in model.modules() if m.__dict__.get("_eightbit") is not None
                   and m.__dict__["_eightbit"].plan.self_attn != "sdpa")
    if eightbit:
        # the 8-bit kernel is not a diffusers attention backend, so it cannot sit inside the exchange
        log.warning("context parallelism: self-attention runs bf16 through diffusers' exchange, not 8-bit "
                    "(self_attn_1_type is ignored on %d blocks while seq_p_size > 1)", eightbit)
    fused = sum(1 for m in model.modules() if m.__dict__.get("_fused_plan"))
    if fused:
        # engine/fused.py calls dispatch_attention_fn itself; it passes the processor's _parallel_config
        # (set just now by enable_parallelism) for self-attention, as diffusers' WanAttnProcessor does.
        log.info("context parallelism: %d fused Wan blocks pass it to their self-attention", fused)


def _backend_of(model):
    for module in model.modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(processor, "_attention_backend"):
            backend = processor._attention_backend
            return getattr(backend, "value", backend)
    return None


@contextmanager
def _cpu_counts_as_one_device():
    """diffusers 0.42 places rank r on device `r % torch.accelerator.device_count()`, which divides by zero
    on a machine without accelerators (the gloo runs on CPU); there, every rank's device is `cpu`."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = original


class _NoState(BaseState):
    def reset(self, *args, **kwargs) -> None:
        pass


class CfgParallelHook(ModelHook):
    """Runs the conditional pass on cfg rank 0 and the unconditional pass on cfg rank 1.

    diffusers' Wan pipelines call the transformer twice per step, inside `cache_context("cond")` then
    `cache_context("uncond")`, and combine the two results after the second call. So the "cond" call
    only records its inputs and returns an empty tensor; the "uncond" call runs this rank's pass,
    exchanges the two predictions (all_gather), fills the "cond" tensor in place and returns "uncond".
    """

    _is_stateful = True  # so that diffusers hands this hook the cache context

    def __init__(self, group, cfg_rank: int):
        super().__init__()
        self.group, self.cfg_rank = group, cfg_rank
        self.state = StateManager(_NoState)
        self.pending = None

    def new_forward(self, module, *args, **kwargs):
        context = self.state._context
        name = context.name if context is not None else None
        return_dict = kwargs.pop("return_dict", True)
        if name == "cond":
            if self.pending is not None:
                raise ParallelError("CFG parallelism got two conditional passes without an unconditional one "
                                    "between them; it needs guidance on (set cfg_p_size to 1 otherwise)")
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            shape = (hidden.shape[0], module.config.out_channels, *hidden.shape[2:])
            placeholder = torch.empty(shape, dtype=hidden.dtype, device=hidden.device)
            self.pending = (args, kwargs, placeholder)
            return _wrap(placeholder, return_dict)
        if name != "uncond" or self.pending is None:
            raise ParallelError(f"CFG parallelism expects the pipeline to call the transformer in "
                                f"cache_context('cond') then ('uncond'); got a call in context {name!r}")
        cond_args, cond_kwargs, placeholder = self.pending
        self.pending = None
        mine_args, mine_kwargs = (cond_args, cond_kwargs) if self.cfg_rank == 0 else (args, kwargs)
        out = self.fn_ref.original_forward(*mine_args, **mine_kwargs, return_dict=False)[0].contiguous()
        both = [torch.empty_like(out) for _ in range(2)]
        dist.all_gather(both, out, group=self.group)
        placeholder.copy_(both[0])
        return _wrap(both[1], return_dict)

    def reset_state(self, module):
        self.pending = None
        return module


def _wrap(sample, return_dict):
    if not return_dict:
        return (sample,)
    from diffusers.models.modeling_outputs import Transformer2DModelOutput

    return Transformer2DModelOutput(sample=sample)


def enable_cfg_parallel(model, group, cfg_rank: int) -> None:
    HookRegistry.check_if_exists_or_initialize(model).register_hook(CfgParallelHook(group, cfg_rank), CFG_HOOK)
