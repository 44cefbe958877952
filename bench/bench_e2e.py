"""End-to-end: a real-size Wan pipeline with random weights through this project's generate(), one row per
setup (bf16, our presets, each memory tier under its cap), in one process.

    python bench/bench_e2e.py --model 14b --size 480p --out docs/bench_e2e_14b.json
    python bench/bench_e2e.py --model 1.3b --rows bf16,fp8,vram24-fp8@8,vram12-fp8@6
    python bench/bench_e2e.py --tiny          # CPU smoke run of the whole script (tests/test_bench_e2e.py)

Rows: `BASE[+OPTION...][@N]`. BASE: `bf16`, `fp8` (hopper-fp8), `int8` (ampere-int8), `fp8-tiled`
(hopper-fp8 with use_tiling_vae), `torchao` (fp8 PerRow on the blocks + compile_repeated_blocks; skipped
when torchao is not importable), or any preset name (the memory tiers: `vram12-fp8`, ...). OPTIONs, each
one setup axis, combinable: `sage8` (LightX2V's 8-bit self-attention, engine.attention), `hybrid` (sage8 with
bf16 attention on the first and last denoising step: attn_bf16_first_steps / attn_bf16_last_steps), `cudnnfp8`
(cuDNN's FP8 self-attention, self_attn_1_type cudnn_fp8; needs nvidia-cudnn-frontend), `tiled`
(use_tiling_vae), the decoder: `tiny` (LightTAE) or `light` (LightVAE), or `fp32vae` (the full VAE in
fp32 without engine/vae/speed.py's GPU default of fp16, channels-last and cuDNN benchmark: the decode
before 2026-12-03). `@N` caps the process at N GiB (torch.cuda.set_per_process_memory_fraction).
Examples: `fp8+sage8+tiny`, `vram12-fp8+tiny@8`, `fp8+fp32vae`. (`fp8-sage8` is read as `fp8+sage8`.)
The light and tiny decoders get seeded random weights from the engine's own modules (diffusers'
AutoencoderKLWan at base width 24; engine.vae.tae.TinyDecoder at widths 256/128/64/64), written to
safetensors files that the rows load through the config keys (vae_path / tae_path), as a user's would be.
The weights are made once on the GPU with a fixed seed (bf16; the VAE fp32; diffusers' fp32 modules kept
fp32) and kept on the CPU; every row aliases them, quantizes with engine.pipeline.quantize_pipeline and is
placed by engine.builder.place_pipeline (fused block, offload), as the builder does. The tokenizer is
built locally. generate()'s mp4 export is replaced by a function that keeps the frames (the device has
no ffmpeg, and PSNR needs them): decode time ends when the frames are back as numpy.
PSNR: frames against the bf16 row's (same weights, seed); "n/a (different decoder)" for light / tiny rows,
whose random weights make that comparison meaningless. Per-step times are synchronized. Peak memory is
measured per phase (encode, denoise, decode) next to engine.memory's prediction per phase (counting the
row's decoder; the `decoder` column is the one engine.memory counted), so a miss can be traced to its
term and the calibration refitted. An out-of-memory error ends only its row ("OOM at <phase>").
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import generate as gen  # noqa: E402
from engine import memory  # noqa: E402
from engine.attention.plan import ATTN_TYPES  # noqa: E402
from engine.builder import LoadedModel, place_pipeline, use_distill_sampler  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.errors import EngineError  # noqa: E402
from engine.presets import load_preset  # noqa: E402
from engine.pipeline import quantize_pipeline  # noqa: E402
from engine.request import Limits, VideoRequest  # noqa: E402

DIT = {"1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30),
       "14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40)}
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0, tie_word_embeddings=False)
SIZES = {"480p": (480, 832), "720p": (720, 1280)}
DEFAULT_ROWS = {"14b": "bf16,fp8,int8,fp8-tiled,fp8+fp32vae,fp8+sage8,fp8+sage8+tiny,fp8+sage8+light,"
                       "vram24-fp8@24,vram16-fp8@16,vram12-fp8@12,vram12-fp8@8,vram12-fp8+tiny@8",
                "1.3b": "bf16,fp8,int8,fp8-tiled,fp8+tiny,fp8+light,vram24-fp8@8,vram12-fp8@8,vram12-fp8@6,"
                        "vram12-fp8+tiny@6",
                "tiny": "bf16,fp8,int8,fp8-tiled,fp8+fp32vae,fp8+tiny,fp8+light,vram24-fp8,vram12-int8"}
ALIASES = {"fp8": "hopper-fp8", "int8": "ampere-int8", "fp8-tiled": "hopper-fp8"}
OPTIONS = ("sage8", "hybrid", "cudnnfp8", "tiled", "tiny", "light", "fp32vae")
DECODER_OPTIONS = ("tiny", "light")  # at most one: each is a different decode
PROMPT = "a red fox runs through fresh snow at dawn, cinematic"


def build_master(model: str, device: torch.device):
    """transformer, text encoder, VAE with seeded random weights, made on `device`, returned on the CPU."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from engine import tiny

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    parts = {}
    for name in ("transformer", "text_encoder", "vae"):
        torch.manual_seed({"transformer": 1, "text_encoder": 2, "vae": 3}[name])
        before = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32 if name == "vae" else dtype)
        try:
            with torch.device(device), torch.no_grad():
                if model == "tiny":
                    module = {"transformer": tiny.tiny_transformer, "vae": tiny.tiny_vae,
                              "text_encoder": lambda: tiny.tiny_text_encoder(len(tiny.tiny_tokenizer()))}[name]()
                elif name == "transformer":
                    module = WanTransformer3DModel(**DIT[model])
                elif name == "text_encoder":
                    module = UMT5EncoderModel(UMT5Config(**UMT5_XXL))
                else:
                    module = AutoencoderKLWan()
        finally:
            torch.set_default_dtype(before)
        if name == "transformer":  # what from_pretrained(torch_dtype=bf16) keeps in fp32
            keep = set(module._keep_in_fp32_modules)
            for tensor_name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
                if set(tensor_name.split(".")) & keep:
                    tensor.data = tensor.data.float()
        parts[name] = module.eval().requires_grad_(False).to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return parts


def alias(module):
    """A structural copy whose parameters and buffers share the master's storage (new tensor objects:
    moving or streaming the copy never touches the master)."""
    memo = {id(p): torch.nn.Parameter(p.data, requires_grad=False) for p in module.parameters()}
    memo.update({id(b): b.detach() for b in module.buffers()})
    return copy.deepcopy(module, memo)


class Row(NamedTuple):  # a NamedTuple: this script is also loaded by path (tests), outside sys.modules
    text: str
    base: str  # bf16 | torchao | an alias | a preset name
    options: tuple[str, ...] = ()
    cap: float | None = None

    @property
    def decoder(self) -> str:
        return next((o for o in self.options if o in ("tiny", "light")), "full")


ATTENTION = {"sage8", "hybrid", "cudnnfp8"}


def linears_key(row: Row) -> tuple:
    """What identifies a row apart from its attention options: `fp8+hybrid+tiny@8` and `fp8+tiny@8` share it."""
    return row.base, frozenset(o for o in row.options if o not in ATTENTION), row.cap


def eightbit_base(base: str) -> bool:
    """Whether the base preset itself runs 8-bit self-attention (the *-speed presets)."""
    if base in ("bf16", "torchao"):
        return False
    return ATTN_TYPES.get(load_preset(ALIASES.get(base, base)).get("self_attn_1_type", "torch_sdpa")) != "sdpa"


def parse_row(text: str) -> Row:
    """`BASE[+OPTION...][@N]` (module docstring); ValueError naming what is wrong."""
    head, _, cap = text.partition("@")
    base, *options = head.split("+")
    if base.endswith("-sage8"):  # the older spelling
        base, options = base[:-len("-sage8")], ["sage8", *options]
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"row {text!r}: unknown option {unknown[0]!r}; options are {', '.join(OPTIONS)}")
    if len([o for o in options if o in DECODER_OPTIONS]) > 1:
        raise ValueError(f"row {text!r}: choose one of {', '.join(DECODER_OPTIONS)} (each is a different decode)")
    if "cudnnfp8" in options and ({"sage8", "hybrid"} & set(options)):
        raise ValueError(f"row {text!r}: cudnnfp8 is another self-attention than sage8/hybrid; choose one")
    if "fp32vae" in options and "tiny" in options:
        raise ValueError(f"row {text!r}: fp32vae sets the full or light VAE's decode; the tiny decoder has its own")
    if base not in ("bf16", "torchao") and base not in ALIASES:
        load_preset(base)  # ConfigError naming the presets
    try:
        cap_gib = float(cap) if cap else None
    except ValueError:
        raise ValueError(f"row {text!r}: the cap after @ must be a number of GiB, got {cap!r}") from None
    return Row(text, base, tuple(dict.fromkeys(options)), cap_gib)


def row_config(row: str | Row, files: dict | None = None):
    """The row's config: its base preset plus its options as the engine's config keys. `files`: the
    decoder files {"tiny": path, "light": path} written by `decoder_files`."""
    row = parse_row(row) if isinstance(row, str) else row
    name = row.base
    if name == "bf16":
        raw = dict(load_preset("hopper-fp8"), dit_quantized=False, t5_quantized=False, clip_quantized=False)
        raw.pop("dit_quant_scheme")
    elif name == "torchao":
        raw = dict(load_preset("hopper-fp8"), dit_quantized=False, t5_quantized=False, fused_wan=False)
        raw.pop("dit_quant_scheme")
    else:
        raw = dict(load_preset(ALIASES.get(name, name)))
    if name == "fp8-tiled" or "tiled" in row.options:
        raw["use_tiling_vae"] = True
    if "sage8" in row.options or "hybrid" in row.options:
        raw["self_attn_1_type"] = "sage_attn2"
    if "cudnnfp8" in row.options:
        raw["self_attn_1_type"] = "cudnn_fp8"
    if "hybrid" in row.options:
        raw.update(attn_bf16_first_steps=1, attn_bf16_last_steps=1)
    if row.decoder != "full":
        path = (files or {}).get(row.decoder)
        if not path:
            raise ValueError(f"row {row.text!r} needs the {row.decoder} decoder's file (decoder_files)")
        raw.update(decoder=row.decoder, **{"tae_path" if row.decoder == "tiny" else "vae_path": str(path)})
    if "fp32vae" in row.options:
        raw.update(vae_dtype="fp32", vae_channels_last=False, vae_cudnn_benchmark=False, vae_compile=False,
                   vae_fused_norm=False)
    return load_config(raw)


def decoder_files(model: str, rows: list[Row], folder: Path) -> dict:
    """Seeded random weights for the light / tiny decoders the rows use, from the engine's own module
    classes, saved as safetensors (the tiny file named like LightX2V's, so it takes un-normalised
    latents as lighttaew2_1 does)."""
    from diffusers import AutoencoderKLWan
    from safetensors.torch import save_file

    from engine.vae.light import WAN_DIM_MULT
    from engine.vae.tae import TinyDecoder

    folder.mkdir(parents=True, exist_ok=True)
    files, wanted = {}, {r.decoder for r in rows} - {"full"}
    if "tiny" in wanted:
        torch.manual_seed(4)
        module = TinyDecoder(widths=(32, 16, 8, 8) if model == "tiny" else (256, 128, 64, 64))
        files["tiny"] = folder / "lighttaew2_1.safetensors"
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(files["tiny"]))
    if "light" in wanted:
        torch.manual_seed(5)
        module = AutoencoderKLWan(base_dim=2 if model == "tiny" else 24, dim_mult=list(WAN_DIM_MULT))
        files["light"] = folder / "lightvaew2_1.safetensors"
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(files["light"]))
    return files


def build_row(row, master, device, files=None):
    from diffusers import WanPipeline

    from engine.builder import configure_decoder
    from engine.tiny import tiny_tokenizer

    cfg = row_config(row, files)
    pipe = WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=alias(master["text_encoder"]),
                       transformer=alias(master["transformer"]), vae=alias(master["vae"]), scheduler=None)
    use_distill_sampler(pipe, 5.0, [1000, 750, 500, 250])
    pipe.set_progress_bar_config(disable=True)
    work = device if device.type == "cuda" else None
    reports = {k: r.summary() for k, r in quantize_pipeline(pipe, cfg, work_device=work).items()}
    configure_decoder(pipe, cfg, None, reports, device.type)  # as the builder does: before placement (offload hooks)
    offload = place_pipeline(pipe, cfg, device, reports)
    if row.startswith("torchao"):
        torchao_blocks(pipe)
    return LoadedModel(pipe, "t2v", f"bench {row}", cfg, device, Limits(), reports, row.split("@")[0],
                       max_sequence_length=512, offload=offload)


def torchao_blocks(pipe) -> None:
    """The strongest peer setup: torchao fp8 PerRow on the transformer blocks only (the text embedder's
    zero-padded rows give NaN otherwise), each block compiled once (compile_repeated_blocks)."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    quantize_(pipe.transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn.startswith("blocks."))
    pipe.transformer.compile_repeated_blocks(fullgraph=True)


def timed_generate(loaded, req, out_dir, marks: dict):
    """generate() with synchronized phase marks and per-phase peak memory (encode, denoise, decode)
    written into `marks` (kept on failure); returns (result, frames)."""
    cuda = loaded.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    marks.clear()
    marks["steps"], marks["peaks"] = [], {}
    frames = {}

    def phase_peak(phase):
        if cuda:  # generate() resets the peak when it starts; each phase boundary resets it again
            marks["peaks"][phase] = torch.cuda.max_memory_allocated(loaded.device)
            torch.cuda.reset_peak_memory_stats(loaded.device)

    def first_forward(_m, _a):
        if "denoise" not in marks:
            sync()
            marks["denoise"] = time.perf_counter()
            phase_peak("encode")

    def on_step(info):
        sync()
        marks["steps"].append(time.perf_counter())
        if info.step == info.total:
            phase_peak("denoise")

    def keep_frames(video, _path, _fps):
        marks["decoded"] = time.perf_counter()
        phase_peak("decode")
        frames["video"] = video

    hook = loaded.pipe.transformer.register_forward_pre_hook(first_forward)
    original, gen.export_mp4 = gen.export_mp4, keep_frames
    sync()
    marks["start"] = time.perf_counter()
    try:
        result = gen.generate(loaded, req, out_dir, on_step=on_step)
    finally:
        gen.export_mp4 = original
        hook.remove()
    return result, frames["video"]


def phase_of(marks: dict, steps: int) -> str:
    if "denoise" not in marks:
        return "encode"
    return "denoise" if len(marks.get("steps", [])) < steps else "decode"


NOT_COMPARABLE = "n/a (different decoder)"  # random light/tiny weights: no relation to the full VAE's frames


def psnr(a, b) -> float | str | None:
    if a is None or b is None or a.shape != b.shape:
        return None
    peak = 255.0 if a.dtype == "uint8" else 1.0  # generate() hands out uint8 frames since 2026-12-03
    mse = float(((a.astype("float64") - b.astype("float64")) ** 2).mean())
    return round(10 * math.log10(peak ** 2 / mse), 2) if mse > 0 else "identical"  # JSON has no infinity


def psnr_vs_linears(row: Row, video, reference: dict):
    """The 8-bit attention's own effect: the row's frames against the same row without its attention
    options, run earlier in this process (None when that row did not run or the row has no such option)."""
    if not ATTENTION & set(row.options):
        return None
    if eightbit_base(row.base):
        return f"n/a ({row.base} runs 8-bit attention itself)"
    return psnr(video, reference.get(linears_key(row)))


def run_row(row: str, master, args, device, reference, warmed: set):
    parsed = parse_row(row)
    cap = parsed.cap
    out = {"row": row, "cap_GiB": cap}
    cuda = device.type == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total) if cap else 1.0, device.index or 0)
    h, w, n = args.height, args.width, args.frames
    phase, loaded, video, marks = "load", None, None, {}
    try:
        t0 = time.perf_counter()
        loaded = build_row(row, master, device, getattr(args, "files", None))
        if cuda:
            torch.cuda.synchronize()
        out["load_s"] = round(time.perf_counter() - t0, 2)
        if cuda:  # what placement left on the GPU: streamed tiers should hold little here
            out["resident_GiB"] = round(torch.cuda.memory_allocated(device) / 2**30, 2)
        key = (row.split("@")[0], loaded.offload)  # kernels compile and tune once per format in a process
        if args.warmup_steps and key not in warmed:
            phase = "warm-up"
            t0 = time.perf_counter()
            timed_generate(loaded, VideoRequest(PROMPT, height=h, width=w, num_frames=n, steps=args.warmup_steps),
                           args.tmp, marks)
            out["warmup_s"] = round(time.perf_counter() - t0, 2)
            warmed.add(key)
        phase = "run"
        est = memory.estimate_loaded(loaded, h, w, n, memory.gpu_budget(device) if cuda else None)
        req = VideoRequest(PROMPT, height=h, width=w, num_frames=n, steps=args.steps, seed=0)
        # the decoder engine.memory counted for this row (it reads the row's config, as generate() does)
        out["decoder"] = est.decoder.kind + ("" if est.decoder.dtype == "fp32" else f" ({est.decoder.dtype})")
        result, video = timed_generate(loaded, req, args.tmp, marks)
        steps = [b - a for a, b in zip([marks["denoise"]] + marks["steps"][:-1], marks["steps"])]
        peak = max(marks["peaks"].values()) if marks["peaks"] else None  # generate()'s own is the decode's only
        out.update(status="ok", total_s=round(marks["decoded"] - marks["start"], 2),
                   encode_s=round(marks["denoise"] - marks["start"], 2), step_s=round(sum(steps) / len(steps), 3),
                   decode_s=round(marks["decoded"] - marks["steps"][-1], 2),
                   peak_GiB=round(peak / 2**30, 2) if peak is not None else None,
                   predicted_GiB=round(est.peak / 2**30, 2),
                   error_pct=round(100 * (est.peak - peak) / peak, 1) if peak else None,
                   weight_GiB=round(sum(result.stats.weight_bytes.values()) / 2**30, 2),
                   psnr_dB=psnr(video, reference.get("video")) if parsed.decoder == "full" else NOT_COMPARABLE,
                   psnr_vs_linears_dB=psnr_vs_linears(parsed, video, reference),
                   tiled=est.tiled and parsed.decoder != "tiny",  # the tiny decoder decodes in chunks, not tiles
                   tiles=est.grid.text() if est.grid is not None and parsed.decoder != "tiny" else None,
                   vae=loaded.reports.get("vae", ""),  # which decode settings ran (engine.vae.speed's note)
                   offload=loaded.offload or "none",
                   measured_phases_GiB={k: round(v / 2**30, 2) for k, v in marks["peaks"].items()},
                   predicted_phases_GiB={k: round(v / 2**30, 2) for k, v in est.phases.items()})
    except (torch.OutOfMemoryError, gen.GenerationError) as e:
        if "out of" not in str(e).lower():
            raise
        out["status"] = f"OOM at {phase_of(marks, args.steps) if phase in ('run', 'warm-up') else phase}"
        if phase == "warm-up":
            out["status"] += " (warm-up)"
        if cuda:  # torch's own message (generate() re-raises it as a sentence) and the allocator's state
            cause = e.__context__ if isinstance(e, gen.GenerationError) else e
            out["oom_detail"] = dict(message=str(cause)[:400],
                                     allocated_GiB=round(torch.cuda.memory_allocated(device) / 2**30, 2),
                                     peak_GiB=round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
    except Exception as e:  # one broken row must not end the table
        traceback.print_exc()
        out["status"] = f"error: {type(e).__name__}: {str(e)[:300]}"
    finally:
        loaded = None
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1.0, device.index or 0)
    return out, video


COLUMNS = ("row", "status", "decoder", "total_s", "load_s", "encode_s", "step_s", "decode_s", "peak_GiB",
           "predicted_GiB", "error_pct", "weight_GiB", "warmup_s", "psnr_dB", "psnr_vs_linears_dB", "tiles", "offload")


def table(rows: list[dict]) -> str:
    lines = [" | ".join(COLUMNS), " | ".join("---" for _ in COLUMNS)]
    lines += [" | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("1.3b", "14b"), default="14b")
    ap.add_argument("--size", choices=tuple(SIZES), default="480p")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup-steps", type=int, default=1, help="steps of the untimed first run per format (0: none)")
    ap.add_argument("--rows", default=None, help="comma-separated; default depends on --model")
    ap.add_argument("--tiny", action="store_true", help="tiny dims on the CPU: a smoke run of the whole script")
    ap.add_argument("--out", default=None, help="JSON file, rewritten after every row")
    ap.add_argument("--tmp", default="/tmp/bench_e2e")
    ap.add_argument("--reference", default=None, help=".npy of the bf16 row's frames: written when the bf16 row "
                    "runs, read otherwise (same seed, same weights), so tiers can run in a second process")
    args = ap.parse_args(argv)
    model = "tiny" if args.tiny else args.model
    args.height, args.width = (32, 32) if args.tiny else SIZES[args.size]
    if args.tiny:
        args.frames, args.steps = min(args.frames, 9), min(args.steps, 2)
    rows = (args.rows or DEFAULT_ROWS[model]).split(",")
    try:  # a typo in a row ends the run before minutes of weight making
        parsed = [parse_row(r) for r in rows]
    except (ValueError, EngineError) as e:
        ap.error(str(e))
    # rows whose frames a later attention row compares with (psnr_vs_linears_dB): only those are kept
    wanted = {linears_key(p) for p in parsed if ATTENTION & set(p.options) and not eightbit_base(p.base)}
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    import diffusers

    report = {"command": " ".join(["python bench/bench_e2e.py"] + list(argv if argv is not None else sys.argv[1:])),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
              "diffusers": diffusers.__version__, "model": model, "height": args.height, "width": args.width,
              "frames": args.frames, "steps": args.steps, "rows": []}
    t0 = time.perf_counter()
    master = build_master(model, device)
    report["build_master_s"] = round(time.perf_counter() - t0, 2)
    args.files = decoder_files(model, parsed, Path(args.tmp) / "decoders")
    print(f"weights made in {report['build_master_s']} s", flush=True)
    reference, warmed = {}, set()
    if args.reference and Path(args.reference).is_file() and "bf16" not in rows:
        import numpy as np

        reference["video"] = np.load(args.reference)
    for row in rows:
        if row.startswith("torchao"):
            try:
                import torchao  # noqa: F401
            except ImportError:
                report["rows"].append({"row": row, "status": "skipped: torchao is not importable"})
                continue
        result, video = run_row(row, master, args, device, reference, warmed)
        if row == "bf16" and video is not None:
            reference["video"] = video
            if args.reference:
                import numpy as np

                np.save(args.reference, video)
        key = linears_key(parse_row(row))
        if video is not None and key in wanted and not ATTENTION & set(parse_row(row).options):
            reference[key] = video
        report["rows"].append(result)
        print(json.dumps(result), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
    print(table(report["rows"]))
    return report


if __name__ == "__main__":
    main()
