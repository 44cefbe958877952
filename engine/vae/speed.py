"""Speed settings for the full Wan VAE decode (and LightVAE, the same network).

Config keys:
- `vae_dtype` (LightX2V's key and spellings: "fp32" | "bf16" | "fp16", also "FP32", "torch.bfloat16",
  ...) plus our "bf16-mixed" / "fp16-mixed": fp32 weights, the decoder run under autocast with its
  first and last convolutions (post_quant_conv, conv_in, conv_out) kept in fp32.
- `vae_channels_last` (bool): 3D convolution weights and the latents in channels-last-3d layout.
- `vae_cudnn_benchmark` (bool): cuDNN autotuning during the decode only (restored after).
- `vae_compile` (bool): torch.compile of each decoder block (regional: mid block and up blocks).
- `vae_fused_norm` (bool): the decoder's RMS norm + SiLU pairs as one Triton kernel (engine/vae/fused_norm.py);
  CUDA only, declined with a log line elsewhere or without Triton.

Default (FAST_SPEED): fp16 weights, channels-last-3d, cuDNN benchmark, fused norm + SiLU. Measured on an
H200 with bench/bench_vae.py (2026-12-04, 480x832x81, random weights): 1.10 s against fp32's 2.78 s
(2.53x), PSNR 65.3 dB against the fp32 frames, peak 4.1 GB instead of 9.0; without the fused norm 1.53 s
(1.81x, 64.1 dB); bf16 with the same flags (no fused norm) 1.64 s at 45.7 dB.
fp16's range is the risk with real weights (no real Wan VAE could be run there): a decode whose frames
come back with NaNs is decoded again in bf16 (fp32's range), the VAE stays bf16 for that process, and
a warning says so. `vae_dtype: fp32` restores the old decode; config keys override each field.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError

log = logging.getLogger("engine.vae")

_SPELLINGS = {"fp32": "fp32", "float32": "fp32", "torch.float32": "fp32",
              "bf16": "bf16", "bfloat16": "bf16", "torch.bfloat16": "bf16",
              "fp16": "fp16", "float16": "fp16", "torch.float16": "fp16",
              "bf16-mixed": "bf16-mixed", "bf16_mixed": "bf16-mixed",
              "fp16-mixed": "fp16-mixed", "fp16_mixed": "fp16-mixed"}
_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP32_ISLANDS = ("post_quant_conv", "decoder.conv_in", "decoder.conv_out")


@dataclass(frozen=True)
class VaeSpeed:
    dtype: str = "fp32"  # fp32 | bf16 | fp16 | bf16-mixed | fp16-mixed
    channels_last: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    fused_norm: bool = False

    def describe(self) -> str:
        extra = [name for name, on in (("channels-last-3d", self.channels_last),
                                       ("cuDNN benchmark", self.cudnn_benchmark),
                                       ("compiled blocks", self.compile),
                                       ("fused RMS norm + SiLU", self.fused_norm)) if on]
        return f"VAE decode in {self.dtype}" + (f" ({', '.join(extra)})" if extra else "")


# fp16-mixed measured slower than plain fp16 (1.84 s: the fp32 islands convert every chunk) at 64.8 dB
FAST_SPEED = VaeSpeed("fp16", channels_last=True, cudnn_benchmark=True, fused_norm=True)
DEFAULT_SPEED = FAST_SPEED


def speed_settings(cfg, device_type: str = "cuda") -> VaeSpeed:
    """The config's settings over the default for `device_type` (on the CPU: fp32, where fp16
    convolutions are slow and the measurements above do not apply)."""
    base = DEFAULT_SPEED if device_type == "cuda" else VaeSpeed()
    raw = cfg.get("vae_dtype", base.dtype)
    mode = _SPELLINGS.get(str(raw).strip().lower() if isinstance(raw, str) else raw)
    if mode is None:
        raise ConfigError(f"vae_dtype must be one of fp32, bf16, fp16, bf16-mixed, fp16-mixed, got {raw!r}")
    flags = {}
    for key, default in (("vae_channels_last", base.channels_last),
                         ("vae_cudnn_benchmark", base.cudnn_benchmark),
                         ("vae_compile", base.compile), ("vae_fused_norm", base.fused_norm)):
        value = cfg.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        flags[key] = value
    return VaeSpeed(mode, flags["vae_channels_last"], flags["vae_cudnn_benchmark"], flags["vae_compile"],
                    flags["vae_fused_norm"])


def apply_speed(vae, speed: VaeSpeed, device_type: str | None = None) -> str:
    """Configure an AutoencoderKLWan in place for `speed`; returns a line for the load report.
    Only the decode path changes; `vae.dtype` stays what the pipeline should hand the latents in.
    `device_type`: where it will decode, when it is still on the CPU now (engine.builder places it later)."""
    if speed == VaeSpeed():
        return ""
    if speed.dtype in _TORCH:
        vae.to(_TORCH[speed.dtype])
    elif speed.dtype.endswith("-mixed"):
        if vae.dtype != torch.float32:
            vae.to(torch.float32)
        for name in FP32_ISLANDS:
            _run_in_fp32(vae.get_submodule(name))
    if speed.channels_last:  # 3D convolution weights only (Module.to(memory_format) fails on 4D ones)
        for module in vae.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last_3d)
    note = speed.describe()
    if speed.fused_norm:  # after the dtype change: the kernel reads gamma in the VAE's dtype
        from .fused_norm import install_fused_norm

        swapped, why = (0, "fp32 activations (the kernel is for fp16/bf16)") if speed.dtype == "fp32" \
            else install_fused_norm(vae, device_type)
        if why is not None:
            log.info("fused RMS norm + SiLU not used for the VAE decode: %s", why)
            note = note.replace("fused RMS norm + SiLU", f"fused RMS norm + SiLU declined: {why}")
        else:
            log.info("fused RMS norm + SiLU: %d decoder norms swapped", swapped)
    if speed.compile:
        # one graph per block and frame kind (first frame, second, the rest): more than the default 8
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 64))
        # static shapes: the blocks share one code object, and the automatic dynamic-shape graph that
        # the varying widths would trigger fails to lower in inductor (seen with torch 2.13 on CPU)
        vae.decoder.mid_block.compile(dynamic=False)
        for block in vae.decoder.up_blocks:
            block.compile(dynamic=False)
    if "_decode" in vae.__dict__:  # configured before: wrap the original, not our wrapper
        vae._decode = vae.__dict__["_decode"].__wrapped__
    vae._decode = _decode_with(vae._decode, speed, vae)
    return note


def _decode_with(decode, speed: VaeSpeed, vae=None):
    state = {"dtype": speed.dtype}

    @functools.wraps(decode)
    def run(z, *args, **kwargs):
        out = _run(z, *args, **kwargs)
        if state["dtype"].startswith("fp16") and vae is not None and _has_nan(out):
            log.warning("the fp16 VAE decode overflowed (NaN in the frames): decoding again in bf16, and in "
                        "bf16 from now on; set vae_dtype: bf16 (or fp32) in the config to skip this retry")
            state["dtype"] = "bf16" if state["dtype"] == "fp16" else "bf16-mixed"
            if state["dtype"] == "bf16":
                vae.to(torch.bfloat16)
            out = _run(z.to(torch.bfloat16) if state["dtype"] == "bf16" else z, *args, **kwargs)
        return out

    def _run(z, *args, **kwargs):
        if speed.channels_last and z.dim() == 5:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = speed.cudnn_benchmark or saved
        try:
            if state["dtype"].endswith("-mixed"):  # CUDA on the GPU; CPU autocast runs the same code in tests
                with torch.autocast(z.device.type, dtype=_TORCH[state["dtype"].split("-")[0]]):
                    return decode(z, *args, **kwargs)
            return decode(z, *args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = saved

    return run


def _has_nan(out) -> bool:
    sample = out.sample if hasattr(out, "sample") else out[0]
    return bool(torch.isnan(sample).any())


def _run_in_fp32(module) -> None:
    """This module runs in fp32 inside the bf16 autocast region: the latents' first projection and the
    last convolution before the clamp to [-1, 1], where bf16's 8-bit mantissa shows in the pixels."""
    forward = module.forward

    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.autocast(args[0].device.type, enabled=False):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            return forward(*args, **kwargs)

    module.forward = run
