"""One rank of the rank-death test (tests/test_parallel.py starts two of these as plain processes, not
under torchrun, so that nothing but our own timeout and gloo stop rank 0).

argv: timeout_s, then "exit" (rank 1 joins the process group and exits at once with status 3) or "hang"
(rank 1 sleeps far past the timeout). Rank 0 waits in an all_reduce and must stop with engine.parallel's
ParallelError (exit status 2, one line on stderr)."""
import os
import sys
import time

import torch
import torch.distributed as dist

from engine.cli import run_command
from engine.config import parse_config
from engine.parallel import guarded, start


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
    sys.exit(run_command(work))
