"""engine/parallel: `torchrun --nproc_per_node 2 -m engine.infer` on the gloo backend (CPU, 127.0.0.1) gives
the same frames as one process, through diffusers' own context-parallel hooks and our CFG hook; the
config and launch errors are one typed sentence; a rank that dies or hangs stops the other."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine import infer, parallel
from engine.config import parse_config
from engine.errors import ConfigError, HardwareError
from engine.parallel import ParallelPlan, check_guidance, check_heads, check_tokens, launch_env, parse_parallel
from tests.conftest import ROOT

BASE = {"infer_steps": 2, "target_video_length": 9, "target_height": 48, "target_width": 32,
        "sample_guide_scale": 3.0, "sample_shift": 5.0, "fps": 8}
ARGS = ["--prompt", "a red fox", "--negative_prompt", "blurry", "--seed", "3", "--device", "cpu"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frames(path):
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="ffmpeg") as reader:
        return np.stack([frame for frame in reader]).astype(np.float64)  # len(reader) is inf: no list()


def psnr(a, b):
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


# --- the config and the launch ---------------------------------------------------------------------

@pytest.mark.parametrize("raw, words", [
    ([2], "must be an object"),
    ({"seq_p_size": 2, "sp_size": 2}, "unknown key(s) ['sp_size']"),
    ({"seq_p_size": 0}, "seq_p_size must be a whole number"),
    ({"seq_p_size": 2.0}, "seq_p_size must be a whole number"),
    ({"cfg_p_size": 4}, "cfg_p_size must be 1 or 2"),
    ({"seq_p_size": 2, "seq_p_attn_type": "flash"}, "seq_p_attn_type must be one of ['ulysses', 'ring']"),
    ({"seq_p_size": 2, "timeout_s": 0}, "timeout_s must be a positive number"),
])
def test_bad_parallel_config_is_one_sentence(raw, words):
    with pytest.raises(ConfigError, match="`parallel`") as e:
        parse_parallel(parse_config({"parallel": raw}))
    assert words in str(e.value)


def test_parallel_plan_from_lightx2v_keys():
    plan = parse_parallel(parse_config({"parallel": {"seq_p_size": 4, "seq_p_attn_type": "ring", "cfg_p_size": 2}}))
    assert (plan.seq, plan.attn, plan.cfg, plan.world) == (4, "ring", 2, 8)
    assert parse_parallel(parse_config({"parallel": {"seq_p_size": 1, "cfg_p_size": 1}})) is None
    assert parse_parallel(parse_config({})) is None


def test_launch_checks_torchrun_and_world_size():
    plan = ParallelPlan(seq=2, cfg=2)
    with pytest.raises(ConfigError, match="not started by torchrun.*torchrun --nproc_per_node 4"):
        launch_env(plan, env={})
    with pytest.raises(ConfigError, match="torchrun started 2 processes but the config asks for 4"):
        launch_env(plan, env={"RANK": "0", "WORLD_SIZE": "2"})
    assert launch_env(plan, env={"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == (3, 1, 4)


def test_heads_tokens_and_guidance_that_do_not_fit():
    with pytest.raises(ConfigError, match=r"40 attention heads.*3 Ulysses ranks.*\[2, 4, 5, 8, 10\]"):
        check_heads(ParallelPlan(seq=3), 40)
    check_heads(ParallelPlan(seq=3, attn="ring"), 40)  # ring splits tokens, not heads
    check_heads(ParallelPlan(seq=8), 40)
    with pytest.raises(ConfigError, match="18 tokens.*4 equal parts"):
        check_tokens(ParallelPlan(seq=4), 18)
    with pytest.raises(ConfigError, match="cfg_p_size` is 2 but guidance is off"):
        check_guidance(ParallelPlan(cfg=2), 1.0)


def test_without_torchrun_the_command_says_so(tmp_path, monkeypatch, capsys):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**BASE, "parallel": {"seq_p_size": 2}}))
    assert infer.main(["--model_path", str(tmp_path), "--config_json", str(cfg), *ARGS]) == 2
    assert "not started by torchrun" in capsys.readouterr().err


def test_backends_that_are_missing_or_cannot_run_here(monkeypatch):
    if not torch.distributed.is_nccl_available():  # a CPU build of torch: no NCCL at all
        with pytest.raises(HardwareError, match="no nccl backend"):
            parallel._backend(torch.device("cuda"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(HardwareError, match="ring attention needs a GPU"):
        parallel.start(parse_config({"parallel": {"seq_p_size": 2, "seq_p_attn_type": "ring"}}), "cpu")


# --- two processes on gloo ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The tiny model and its video from one process (the reference)."""
    root = tmp_path_factory.mktemp("parallel")
    model = infer.save_tiny(root / "t2v", "t2v")
    cfg = root / "one.json"
    cfg.write_text(json.dumps(BASE))
    out = root / "one.mp4"
    infer.run(infer.parse_args(["--model_path", str(model), "--config_json", str(cfg), *ARGS,
                                "--save_result_path", str(out)]))
    return root, model, frames(out)


@pytest.mark.slow
@pytest.mark.parametrize("name, keys", [("ulysses", {"seq_p_size": 2, "seq_p_attn_type": "ulysses"}),
                                        ("cfg", {"cfg_p_size": 2})])
def test_torchrun_two_processes_give_the_single_process_frames(single, name, keys):
    root, model, reference = single
    cfg = root / f"{name}.json"
    cfg.write_text(json.dumps({**BASE, "parallel": {**keys, "timeout_s": 60}}))
    out = root / name / "video.mp4"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "engine.infer", "--model_path", str(model),
           "--config_json", str(cfg), *ARGS, "--save_result_path", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=150,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 2 processes" in done.stdout and done.stdout.count("step 2/2") == 1  # rank 0 alone reports
    assert sorted(p.name for p in out.parent.iterdir()) == ["video.mp4"]  # rank 1 left nothing
    got = frames(out)
    assert got.shape == reference.shape == (9, 48, 32, 3)
    # Exactly equal, not merely >= 40 dB: on this tiny model a run whose attention skips the Ulysses
    # exchange (each rank attending to its own half of the tokens) still scores 42 dB.
    assert psnr(got, reference) == float("inf")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_rank_that_dies_or_hangs_stops_the_other_with_a_message(mode):
    port, timeout_s = free_port(), 3
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.parallel_worker", str(timeout_s), mode],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        _, err = procs[0].communicate(timeout=90)
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 2, err[-2000:]
    assert "error: rank 0: a collective failed or waited longer than the process group's timeout (3 s" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_fused_block_attention_takes_part_in_context_parallelism(tmp_path):
    """engine/fused.py calls dispatch_attention_fn itself; with the processor's parallel config it must give
    each rank its tokens' rows of attention over all tokens (without it, only over its own half)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "tests.parallel_worker", "fused"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PARALLEL_WORKER_OUT": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    for r in rows:
        assert r["cp_err"] < 1e-5 and r["local_err"] > 0.1, r
