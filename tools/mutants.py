"""Hand-written mutation testing: does the CPU suite notice the bugs a user would hit?

Each mutant below is one realistic bug (a swapped key, a scale row moved, a bias dropped, a running
max kept as a last value...) written as an exact text edit of one engine file. For each mutant the
script copies the tree once into a temporary folder, applies the edit there (never to your tree),
runs the test files that should notice, and reports KILLED (some test failed: good) or SURVIVED
(every test passed: a hole in the suite). A mutant whose text is no longer in the file is STALE:
the code moved on; update the mutant.

    python tools/mutants.py                 # every mutant, against this checkout
    python tools/mutants.py kv_swap nv_row  # some of them (names or prefixes)
    python tools/mutants.py --list
    python tools/mutants.py --root /tmp/old # against another checkout (e.g. a `git worktree` of an old commit)

Why hand-written rather than mutmut: generic operator flips mostly produce crashes the suite
catches anyway or harmless rewrites; these are the bugs reviewers actually found, and each names
the tests expected to catch it, so a run takes minutes on two cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

CHECKPOINT = ["tests/test_checkpoint_exact.py", "tests/test_checkpoint.py", "tests/test_keymaps.py", "tests/test_convert_exact.py",
              "tests/test_calibrate.py", "tests/test_checkpoint_comfy.py", "tests/test_convert.py",
              "tests/test_infer.py", "tests/test_checkpoint_faults.py", "tests/test_encoders_load.py"]
FORMATS = ["tests/test_formats.py", "tests/test_linear.py", "tests/test_checkpoint_exact.py",
           "tests/test_checkpoint.py", "tests/test_tiny_pipeline.py"]
REQUEST = ["tests/test_request.py", "tests/test_app_service.py", "tests/test_infer.py"]
CALIB = ["tests/test_calibrate.py"]
HUB = ["tests/test_hub_progress.py", "tests/test_hub.py", "tests/test_app_hub.py"]
PIPELINE = ["tests/test_tiny_pipeline.py", "tests/test_checkpoint.py", "tests/test_checkpoint_exact.py"]


@dataclass
class Mutant:
    name: str
    file: str
    edits: list  # [(exact old text, new text), ...], each old text found exactly once; or a list of such
    # lists: alternatives for code that is being rewritten, the first that applies is used
    tests: list[str]
    why: str


M = Mutant
MUTANTS = [
    # ---- key maps ---------------------------------------------------------------------------
    M("kv_swap", "engine/checkpoint/keymaps.py",
      [(r'self_attn\.k", r"blocks.\1.attn1.to_k"', r'self_attn\.k", r"blocks.\1.attn1.to_v"'),
       (r'self_attn\.v", r"blocks.\1.attn1.to_v"', r'self_attn\.v", r"blocks.\1.attn1.to_k"')],
      CHECKPOINT, "self-attention k and v sent to each other's diffusers module"),
    M("img_kv_swap", "engine/checkpoint/keymaps.py",
      [(r'k_img", r"blocks.\1.attn2.add_k_proj"', r'k_img", r"blocks.\1.attn2.add_v_proj"'),
       (r'v_img", r"blocks.\1.attn2.add_v_proj"', r'v_img", r"blocks.\1.attn2.add_k_proj"')],
      CHECKPOINT, "image key/value projections swapped (i2v)"),
    M("o_swap", "engine/checkpoint/keymaps.py",
      [(r'self_attn\.o", r"blocks.\1.attn1.to_out.0"', r'self_attn\.o", r"blocks.\1.attn2.to_out.0"'),
       (r'cross_attn\.o", r"blocks.\1.attn2.to_out.0"', r'cross_attn\.o", r"blocks.\1.attn1.to_out.0"')],
      CHECKPOINT, "self- and cross-attention output projections swapped (same shape)"),
    M("text_emb_swap", "engine/checkpoint/keymaps.py",
      [(r'(r"^text_embedding\.0", "condition_embedder.text_embedder.linear_1")',
        r'(r"^text_embedding\.0", "condition_embedder.text_embedder.linear_2")'),
       (r'(r"^text_embedding\.2", "condition_embedder.text_embedder.linear_2")',
        r'(r"^text_embedding\.2", "condition_embedder.text_embedder.linear_1")')],
      CHECKPOINT, "text embedder's two linears swapped"),
    M("t5_gate_fc1_swap", "engine/checkpoint/keymaps.py",
      [(r'ffn\.gate\.0", r"encoder.block.\1.layer.1.DenseReluDense.wi_0"',
        r'ffn\.gate\.0", r"encoder.block.\1.layer.1.DenseReluDense.wi_1"'),
       (r'ffn\.fc1", r"encoder.block.\1.layer.1.DenseReluDense.wi_1"',
        r'ffn\.fc1", r"encoder.block.\1.layer.1.DenseReluDense.wi_0"')],
      CHECKPOINT, "T5 gated-GELU gate and fc1 swapped (same shape)"),
    # ---- checkpoint loading -----------------------------------------------------------------
    M("nv_row_swap", "engine/checkpoint/formats.py",
      [('    out["weight_scale"] = raw.view(f.scale_dtype)\n',
        '    out["weight_scale"] = raw[[1, 0] + list(range(2, raw.shape[0]))].view(f.scale_dtype)\n')],
      CHECKPOINT, "MX/NV loader swaps the scales of rows 0 and 1"),
    M("swizzle_when_plain", "engine/checkpoint/formats.py",
      [("if tuple(raw.shape) == swizzled_shape(*want):",
        "if tuple(raw.shape) == swizzled_shape(*want) and tuple(raw.shape) != tuple(want):")],
      CHECKPOINT, "a scale whose swizzled shape equals the plain one (real Wan sizes) left swizzled"),
    M("drop_bias", "engine/checkpoint/assemble.py",
      [[('            if "bias" in group:\n                buffers["bias"] = group["bias"]\n',
         '            if "bias" in group:\n                buffers["bias"] = group["bias"] * 0\n')],
       [('                buffers["bias"] = group["bias"]\n', '                buffers["bias"] = group["bias"] * 0\n')]],
      CHECKPOINT + PIPELINE, "quantized layers lose their biases"),
    M("zero_ffn2", "engine/checkpoint/assemble.py",
      [('            state[f"{prefix}.{name}"] = t.to(dtype) if name == "bias" else t\n',
        '            state[f"{prefix}.{name}"] = t.to(dtype) if name == "bias" else '
        '(t * 0 if prefix.endswith("ffn.net.2") and name == "weight_scale" else t)\n')],
      CHECKPOINT, "every ffn.2 weight loads as zeros"),
    M("nv_gs_inverted", "engine/checkpoint/formats.py",
      [[('gs = t["weight_global_scale"].to(torch.float32).reshape(1)',
         'gs = 1.0 / t["weight_global_scale"].to(torch.float32).reshape(1)')],
       [('gs = _one(t["weight_global_scale"], f"{where}: weight_global_scale")',
         'gs = 1.0 / _one(t["weight_global_scale"], f"{where}: weight_global_scale")')]],
      CHECKPOINT, "NVFP4 weight global scale read as its inverse"),
    M("alpha_formula", "engine/checkpoint/formats.py",
      [[("igs = 1.0 / (t[\"alpha\"].to(torch.float32).reshape(-1)[:1] * weight_gs)",
         "igs = 1.0 / t[\"alpha\"].to(torch.float32).reshape(-1)[:1]")],
       [('igs = 1.0 / (_one(t["alpha"], f"{where}: alpha") * weight_gs)',
         'igs = 1.0 / _one(t["alpha"], f"{where}: alpha")')]],
      CHECKPOINT, "NVFP4 alpha taken as 1/input_gs, forgetting the weight global scale"),
    M("calib_names_unmapped", "engine/checkpoint/dit.py",
      [('layer = wan_to_diffusers(name[:-len(".weight")] if name.endswith(".weight") else name)',
        'layer = name[:-len(".weight")] if name.endswith(".weight") else name')],
      CHECKPOINT, "calib.pt's Wan layer names not mapped: no layer gets its activation scale"),
    M("block_scale_transposed", "engine/checkpoint/formats.py",
      [('        out["weight_scale"] = scale.reshape(f.weight_scale_shape(rows, cols))\n',
        '        out["weight_scale"] = scale.reshape(f.weight_scale_shape(rows, cols)[::-1]).t().contiguous()\n')],
      CHECKPOINT, "fp8 block-128 scale grid read transposed"),
    M("save_unswizzled", "engine/checkpoint/formats.py",
      [('        out["weight_scale"] = swizzle(scale)\n', '        out["weight_scale"] = scale\n')],
      CHECKPOINT, "the converter writes MX/NV scales unswizzled (its own loader reads them back fine)"),
    M("save_gs_inverted", "engine/checkpoint/formats.py",
      [('out["weight_global_scale"] = buffers["weight_global_scale"].to(torch.float32).reshape(1)',
        'out["weight_global_scale"] = 1.0 / buffers["weight_global_scale"].to(torch.float32).reshape(1)')],
      CHECKPOINT, "the converter writes NVFP4's weight global scale inverted"),
    # ---- number formats ---------------------------------------------------------------------
    M("e8m0_floor", "engine/formats/base.py",
      [("exp = torch.ceil(torch.log2(amax.clamp(min=2.0 ** -127) / self.elem_max))",
        "exp = torch.floor(torch.log2(amax.clamp(min=2.0 ** -127) / self.elem_max))")],
      FORMATS, "MX scale rounded down: elements overflow and saturate"),
    M("nibble_order", "engine/formats/elements.py",
      [("codes = torch.stack([packed & 0xF, packed >> 4], dim=-1)",
        "codes = torch.stack([packed >> 4, packed & 0xF], dim=-1)")],
      FORMATS, "e2m1 unpacking reads the high nibble first"),
    M("swizzle_tile_order", "engine/formats/swizzle.py",
      [("permute(0, 3, 2, 1, 4)\n    return tiles.reshape(prow, pcol).view(scale.dtype)",
        "permute(0, 3, 1, 2, 4)\n    return tiles.reshape(prow, pcol).view(scale.dtype)"),
       ("reshape(prow // 128, pcol // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)",
        "reshape(prow // 128, pcol // 4, 4, 32, 4).permute(0, 2, 3, 1, 4)")],
      FORMATS + ["tests/test_keymaps.py"], "swizzle and unswizzle agree with each other but not with cuBLAS's layout"),
    M("nv_gs_numerator", "engine/formats/base.py",
      [("global_scale = (self.elem_max * 448.0) / tmax", "global_scale = (self.elem_max * 256.0) / tmax")],
      FORMATS, "NVFP4 global scale maps amax to 6*256 instead of 6*448"),
    M("int8_floor_scale", "engine/formats/base.py",
      [("scale = amax.clamp(min=self.amax_floor) / self.elem_max", "scale = amax.clamp(min=self.amax_floor) / (self.elem_max + 1)")],
      FORMATS, "per-channel scale divided by 128/449 instead of 127/448"),
    # ---- request validation -----------------------------------------------------------------
    M("frame_hint", "engine/request.py",
      [("lower = (frames - 1) // 4 * 4 + 1", "lower = frames // 4 * 4 + 1")],
      REQUEST, "frame-count hint suggests a value above the one asked for"),
    M("size_hint_step", "engine/request.py",
      [("try {lower} or {lower + SIZE_MULTIPLE}", "try {lower} or {lower + 8}")],
      REQUEST, "size hint's upper suggestion is not a multiple of 16"),
    M("size_hint_floor", "engine/request.py",
      [("lower = max(limits.min_side, value // SIZE_MULTIPLE * SIZE_MULTIPLE)",
        "lower = max(limits.min_side, value // SIZE_MULTIPLE * SIZE_MULTIPLE - SIZE_MULTIPLE)")],
      REQUEST, "size hint's lower suggestion skips the nearest multiple"),
    M("max_exclusive_int", "engine/request.py",
      [("    if not low <= number <= high:\n        raise RequestError(f\"{name} must be between {low} and {high}, got {int(number)}\")",
        "    if not low <= number < high:\n        raise RequestError(f\"{name} must be between {low} and {high}, got {int(number)}\")")],
      REQUEST, "the largest allowed value (e.g. 121 frames, 1280 px) is rejected"),
    # ---- calibration ------------------------------------------------------------------------
    M("calib_last_max", "engine/calibrate.py",
      [("table[key] = amax if prev is None else torch.maximum(prev, amax)", "table[key] = amax")],
      CALIB, "calibration keeps the last call's max instead of the running max"),
    M("calib_signed_max", "engine/calibrate.py",
      [("amax = x.abs().amax().float().cpu()", "amax = x.amax().float().cpu()")],
      CALIB, "calibration records max x instead of max |x|"),
    M("calib_first_prompt_only", "engine/calibrate.py",
      [("            for i, prompt in enumerate(prompts):", "            for i, prompt in enumerate(prompts[:1]):")],
      CALIB, "calibration runs only the first prompt"),
    # ---- hub progress -----------------------------------------------------------------------
    M("hub_kib", "engine/hub.py",
      [[("progress(Progress(done + n, total, name, i, len(missing)))",
         "progress(Progress((done + n) // 1024, total, name, i, len(missing)))")],
       [("report(Progress(done + sink.written, total, name, i, len(missing)))",
         "report(Progress((done + sink.written) // 1024, total, name, i, len(missing)))")]],
      HUB, "download progress reported in KiB against a total in bytes"),
    M("hub_restart_per_file", "engine/hub.py",
      [[("progress(Progress(done + n, total, name, i, len(missing)))",
         "progress(Progress(n, total, name, i, len(missing)))")],
       [("report(Progress(done + sink.written, total, name, i, len(missing)))",
         "report(Progress(sink.written, total, name, i, len(missing)))")]],
      HUB, "download progress restarts at 0 for every file"),
]


def copy_tree(src: str, dst: str) -> None:
    skip = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "*.pyc", ".venv", "node_modules")
    shutil.copytree(src, dst, ignore=skip, symlinks=True)


def run_tests(root: str, tests: list[str], timeout: int) -> tuple[str, str]:
    present = [t for t in dict.fromkeys(tests) if os.path.exists(os.path.join(root, t))]
    if not present:
        return "NO TESTS", ""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rf", "-m", "not gpu", *present]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "KILLED (timeout)", ""
    if proc.returncode == 0:
        return "SURVIVED", ""
    if proc.returncode == 5:
        return "NO TESTS", ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    return "KILLED", failed[0] if failed else proc.stdout.strip().splitlines()[-1][:120]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="mutant names or prefixes (default: all)")
    p.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="the checkout to mutate (a copy of it is made; it is never edited)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--timeout", type=int, default=900, help="seconds per mutant")
    args = p.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or any(m.name.startswith(n) for n in args.names)]
    if args.list:
        for m in chosen:
            print(f"{m.name:24} {m.file:32} {m.why}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        tree = os.path.join(tmp, "tree")
        copy_tree(args.root, tree)
        for m in chosen:
            path = os.path.join(tree, m.file)
            original = open(path).read() if os.path.exists(path) else ""
            text = original
            choices = m.edits if isinstance(m.edits[0], list) else [m.edits]
            edits = next((e for e in choices if all(text.count(old) == 1 for old, _ in e)), None)
            if edits is None:
                results.append((m, "STALE", f"text not found once in {m.file}", 0.0))
                print(f"{m.name:24} STALE", flush=True)
                continue
            for old, new in edits:
                text = text.replace(old, new)
            start = time.perf_counter()
            try:
                open(path, "w").write(text)
                verdict, by = run_tests(tree, m.tests, args.timeout)
            finally:
                open(path, "w").write(original)
            results.append((m, verdict, by, time.perf_counter() - start))
            print(f"{m.name:24} {verdict:16} {by}  ({time.perf_counter() - start:.0f} s)", flush=True)
    survived = [m.name for m, v, _, _ in results if v in ("SURVIVED", "NO TESTS")]
    print(f"\n{len(results)} mutants: {sum(v.startswith('KILLED') for _, v, _, _ in results)} killed, "
          f"{len(survived)} survived{': ' + ', '.join(survived) if survived else ''}, "
          f"{sum(v == 'STALE' for _, v, _, _ in results)} stale")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
