"""One rank of the rank-death test (tests/test_parallel.py starts two of these as plain processes, not
under torchrun, so that nothing but our own timeout and gloo stop rank 0).

argv "fused" (under torchrun, 2 ranks): engine/fused.py's attention call under diffusers' Ulysses context
parallelism against plain attention over all tokens; prints one JSON line per rank.

Otherwise argv: timeout_s, then "exit" (rank 1 joins the process group and exits at once with status 3) or "hang"
(rank 1 sleeps far past the timeout). Rank 0 waits in an all_reduce and must stop with engine.parallel's
ParallelError (exit status 2, one line on stderr)."""
import json
import os
import sys
from types import SimpleNamespace
import time

import torch
import torch.distributed as dist

from engine.cli import run_command
from engine.config import parse_config
from engine.parallel import guarded, start


def fused_attention():
    from engine.fused import _attention
    from engine.tiny import tiny_transformer

    par = start(parse_config({"parallel": {"seq_p_size": 2, "timeout_s": 60}}), "cpu")
    with guarded(par):
        torch.manual_seed(0)  # the same model and tokens on both ranks
        model = tiny_transformer()
        q, k, v = torch.randn(3, 1, 8, model.config.num_attention_heads * model.config.attention_head_dim)
        par.apply(SimpleNamespace(transformer=model))
        attn = model.blocks[0].attn1
        full = _attention(attn, q, k, v)  # every token, one process
        mine = slice(4 * par.rank, 4 * par.rank + 4)  # this rank's half of the tokens
        cp = _attention(attn, q[:, mine], k[:, mine], v[:, mine], parallel_config=attn.processor._parallel_config)
        local = _attention(attn, q[:, mine], k[:, mine], v[:, mine])  # what a bypassed hook would give
        # one file per rank: two ranks printing to torchrun's shared stdout can interleave their lines
        out = os.environ.get("PARALLEL_WORKER_OUT")
        line = json.dumps({"rank": par.rank, "cp_err": (cp - full[:, mine]).abs().max().item(),
                           "local_err": (local - full[:, mine]).abs().max().item()})
        if out:
            with open(os.path.join(out, f"rank{par.rank}.json"), "w") as f:
                f.write(line)
        else:
            print(line, flush=True)


def work():
    par = start(parse_config({"parallel": {"cfg_p_size": 2, "timeout_s": float(sys.argv[1])}}), "cpu")
    with guarded(par):
        if par.rank == 1:
            if sys.argv[2] == "hang":
                time.sleep(120)
            os._exit(3)
        dist.all_reduce(torch.ones(4))
        dist.all_reduce(torch.ones(4))


if __name__ == "__main__":
    code = run_command(fused_attention if sys.argv[1] == "fused" else work)
    # Skip the interpreter's teardown: on CPU, gloo's threads left from diffusers' device mesh sometimes
    # abort the process there ("terminate called without an active exception", about 1 run in 12) after
    # all the work and the process group's destruction are done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
