"""Several GPUs: one video across the processes that `torchrun --nproc_per_node N` starts.

The config's `"parallel"` object uses LightX2V's keys:

    "parallel": {"seq_p_size": 4, "seq_p_attn_type": "ulysses" | "ring", "cfg_p_size": 2, "timeout_s": 600}

- Sequence parallelism is diffusers' context parallelism (`ContextParallelConfig` with `ulysses_degree`
  or `ring_degree`, `transformer.enable_parallelism`, the Wan model's own `_cp_plan`): every rank holds
  the whole (quantized) transformer and 1/seq_p_size of the video tokens; self-attention exchanges them.
- CFG parallelism: the conditional pass runs on one rank group and the unconditional pass on the other,
  and the two noise predictions are exchanged (one all_gather per step). diffusers has no CFG parallelism
  of its own, so a small diffusers `ModelHook` does it, keyed on the pipeline's own `cache_context("cond")`
  / `("uncond")` marks.
- The process mesh is (cfg, ring, ulysses), so both kinds combine: world size = seq_p_size x cfg_p_size.
- Every collective has the process group's timeout (`timeout_s`, default 600 s): a rank that hangs or
  dies makes the others stop with ParallelError after at most that long (torchrun usually stops them
  sooner: it ends every worker when one exits with an error).
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch

from ..errors import ConfigError, HardwareError, ParallelError

log = logging.getLogger("engine.parallel")

KEYS = {"seq_p_size", "seq_p_attn_type", "cfg_p_size", "timeout_s"}
ATTN_TYPES = ("ulysses", "ring")
DEFAULT_TIMEOUT_S = 600


@dataclass(frozen=True)
class ParallelPlan:
    seq: int = 1
    attn: str = "ulysses"
    cfg: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def world(self) -> int:
        return self.seq * self.cfg


def parse_parallel(cfg) -> ParallelPlan | None:
    """The plan from the config's `parallel` object; None when it asks for one process."""
    raw = cfg.get("parallel")
    if raw is None:
        return None
    where = f"{getattr(cfg, 'source', '<dict>')}: `parallel`"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be an object like {{\"seq_p_size\": 2, \"cfg_p_size\": 1}}, got {raw!r}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; known: {sorted(KEYS)}")
    seq, cfg_p = raw.get("seq_p_size", 1), raw.get("cfg_p_size", 1)
    attn, timeout = raw.get("seq_p_attn_type", "ulysses"), raw.get("timeout_s", DEFAULT_TIMEOUT_S)
    if type(seq) is not int or seq < 1:
        raise ConfigError(f"{where}.seq_p_size must be a whole number >= 1, got {seq!r}")
    if cfg_p not in (1, 2) or type(cfg_p) is not int:
        raise ConfigError(f"{where}.cfg_p_size must be 1 or 2 (conditional and unconditional pass), got {cfg_p!r}")
    if attn not in ATTN_TYPES:
        raise ConfigError(f"{where}.seq_p_attn_type must be one of {list(ATTN_TYPES)}, got {attn!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ConfigError(f"{where}.timeout_s must be a positive number of seconds, got {timeout!r}")
    plan = ParallelPlan(seq, attn, cfg_p, float(timeout))
    return plan if plan.world > 1 else None


def check_guidance(plan: ParallelPlan, guidance: float) -> None:
    if plan.cfg == 2 and guidance <= 1.0:
        raise ConfigError(f"`parallel.cfg_p_size` is 2 but guidance is off (sample_guide_scale {guidance}): there "
                          "is no unconditional pass to run on the second rank group; set cfg_p_size to 1")


def check_heads(plan: ParallelPlan, heads: int) -> None:
    """Ulysses gives each rank heads / seq_p_size whole heads."""
    if plan.seq > 1 and plan.attn == "ulysses" and heads % plan.seq:
        valid = [n for n in range(2, heads + 1) if heads % n == 0 and n <= 16]
        raise ConfigError(f"the transformer has {heads} attention heads, which {plan.seq} Ulysses ranks cannot "
                          f"share; use seq_p_size in {valid}, or seq_p_attn_type \"ring\"")


def check_tokens(plan: ParallelPlan, tokens: int) -> None:
    """diffusers splits the video tokens into equal parts, one per sequence-parallel rank."""
    if plan.seq > 1 and tokens % plan.seq:
        raise ConfigError(f"this video has {tokens} tokens (latent frames x height/16 x width/16), which do not "
                          f"split into {plan.seq} equal parts; change the size or frame count, or seq_p_size")


def launch_env(plan: ParallelPlan, env=os.environ) -> tuple[int, int, int]:
    """(rank, local rank, world size) that torchrun set, checked against the plan."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        raise ConfigError(f"the config asks for {plan.world} processes (seq_p_size {plan.seq} x cfg_p_size "
                          f"{plan.cfg}) but this process was not started by torchrun; run "
                          f"`torchrun --nproc_per_node {plan.world} -m engine.infer ...`")
    world = int(env["WORLD_SIZE"])
    if world != plan.world:
        raise ConfigError(f"torchrun started {world} processes but the config asks for {plan.world} "
                          f"(seq_p_size {plan.seq} x cfg_p_size {plan.cfg}); use --nproc_per_node {plan.world} "
                          "or change `parallel`")
    return int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"])), world


def _backend(device: torch.device) -> str:
    import torch.distributed as dist

    name = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or not dist.is_backend_available(name):
        raise HardwareError(f"this PyTorch build has no {name} backend for torch.distributed, which a "
                            f"multi-process run on {device.type} needs; install a PyTorch build with it")
    return name


class Parallel:
    """One process's part of a multi-process run (made by `start`)."""

    def __init__(self, plan: ParallelPlan, rank: int, local_rank: int, device: torch.device):
        self.plan, self.rank, self.local_rank, self.device = plan, rank, local_rank, device
        self.mesh = None

    def init_group(self) -> None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        backend = _backend(self.device)
        dist.init_process_group(backend, timeout=timedelta(seconds=self.plan.timeout_s))
        ring = self.plan.seq if self.plan.attn == "ring" else 1
        self.mesh = init_device_mesh(self.device.type, (self.plan.cfg, ring, self.plan.seq // ring),
                                     mesh_dim_names=("cfg", "ring", "ulysses"))
        log.info("rank %d of %d on %s: %s", self.rank, self.plan.world, self.device, self.describe())

    def describe(self) -> str:
        parts = []
        if self.plan.seq > 1:
            parts.append(f"{self.plan.attn} sequence parallel over {self.plan.seq} ranks")
        if self.plan.cfg > 1:
            parts.append("CFG parallel over 2 rank groups")
        return ", ".join(parts)

    def apply(self, pipe) -> None:
        """Enable the plan on every transformer of `pipe` (after loading, quantizing and fusing)."""
        from .hooks import enable_cfg_parallel, enable_sequence_parallel

        for attr in ("transformer", "transformer_2"):
            model = getattr(pipe, attr, None)
            if model is None:
                continue
            if self.plan.seq > 1:
                check_heads(self.plan, model.config.num_attention_heads)
                enable_sequence_parallel(model, self.plan, self.mesh)
            if self.plan.cfg > 1:
                enable_cfg_parallel(model, self.mesh["cfg"].get_group(), self.mesh["cfg"].get_local_rank())

    def close(self, finished: bool = True) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                # every rank reaches this before any tears its group down: a rank that left first made gloo
                # abort the other at exit ("terminate called without an active exception", seen on CPU)
                dist.barrier()
            dist.destroy_process_group()


def start(cfg, device_arg: str | None) -> Parallel | None:
    """Join the process group that torchrun set up when the config asks for parallelism; else None."""
    plan = parse_parallel(cfg)
    if plan is None:
        return None
    rank, local_rank, _ = launch_env(plan)
    want = torch.device(device_arg) if device_arg else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        if torch.cuda.device_count() <= local_rank:
            raise HardwareError(f"rank {rank} wants GPU {local_rank} but this machine shows "
                                f"{torch.cuda.device_count()} CUDA device(s); start at most that many processes "
                                "per machine (--nproc_per_node)")
        want = torch.device("cuda", local_rank)
        torch.cuda.set_device(want)
    elif plan.seq > 1 and plan.attn == "ring":
        raise HardwareError("ring attention needs a GPU: diffusers 0.42's ring attention merges partial results "
                            "with the log-sum-exp, and none of its attention backends returns one on CPU; use "
                            "seq_p_attn_type \"ulysses\" on CPU")
    par = Parallel(plan, rank, local_rank, want)
    par.init_group()
    return par


@contextmanager
def guarded(par: Parallel):
    """Turn a failed or timed-out collective into ParallelError, and leave the process group."""
    import torch.distributed as dist

    finished = False
    try:
        yield
        finished = True
    except (dist.DistError, RuntimeError) as e:
        # NCCL reports a timeout or a lost peer as DistBackendError; gloo as a plain RuntimeError whose
        # text names its own source (third_party/gloo/...). Any other RuntimeError is not ours to reword.
        if not isinstance(e, dist.DistError) and "gloo" not in str(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ParallelError(f"rank {par.rank}: a collective failed or waited longer than the process group's "
                            f"timeout ({par.plan.timeout_s:g} s, `parallel.timeout_s`); another rank probably "
                            f"stopped (see its output above): {first}") from None
    finally:
        par.close(finished)


def video_tokens(pipe, req) -> int:
    """Tokens the transformer sees for `req`: latent frames x latent height x latent width / patch."""
    t, s = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    pt, ph, pw = pipe.transformer.config.patch_size
    return ((req.num_frames - 1) // t + 1) // pt * (req.height // s // ph) * (req.width // s // pw)


def run_rank(par: Parallel, model, req, out, generate):
    """This rank's part of one video. Rank 0 prints progress and writes `out`; every other rank runs the
    same pipeline (the collectives need it) and exports into a temporary folder that is then removed."""
    import tempfile

    import torch.distributed as dist

    check_guidance(par.plan, req.guidance)
    check_tokens(par.plan, video_tokens(model.pipe, req))
    with guarded(par):
        par.apply(model.pipe)
        if par.rank != 0:
            with tempfile.TemporaryDirectory(prefix=f"engine-rank{par.rank}-") as scratch:
                generate(model, req, scratch)
            dist.barrier()
            return None

        def step(info):
            print(f"step {info.step}/{info.total}: {info.seconds:.2f} s", flush=True)

        result = generate(model, req, out.parent if str(out.parent) else ".", on_step=step)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.path.replace(out)
        dist.barrier()
    for comp, text in model.reports.items():
        print(f"{comp}: {text}")
    print(f"saved {out} ({result.frames} frames, {result.width}x{result.height}) in "
          f"{result.stats.seconds_total:.1f} s on {par.plan.world} processes ({par.describe()})")
    return out
