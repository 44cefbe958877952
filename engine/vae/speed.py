"""Speed settings for the full Wan VAE decode (and LightVAE, the same network).

Config keys:
- `vae_dtype` (LightX2V's key and spellings: "fp32" | "bf16" | "fp16", also "FP32", "torch.bfloat16",
  ...) plus our "bf16-mixed" / "fp16-mixed": fp32 weights, the decoder run under autocast with its
  first and last convolutions (post_quant_conv, conv_in, conv_out) kept in fp32.
- `vae_channels_last` (bool): 3D convolution weights and the latents in channels-last-3d layout.
- `vae_cudnn_benchmark` (bool): cuDNN autotuning during the decode only (restored after).
- `vae_compile` (bool): torch.compile of each decoder block (regional: mid block and up blocks).

Default: fp32, nothing else, as the project ships today. bench/bench_vae.py measures each option's
decode time and PSNR against fp32; once the GPU numbers give PSNR >= 45 dB, switching the default is
one line: `DEFAULT_SPEED = FAST_SPEED` below (or FAST_SPEED edited to the row the numbers favour).
Config keys still override each field.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..errors import ConfigError

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

    def describe(self) -> str:
        extra = [name for name, on in (("channels-last-3d", self.channels_last),
                                       ("cuDNN benchmark", self.cudnn_benchmark),
                                       ("compiled blocks", self.compile)) if on]
        return f"VAE decode in {self.dtype}" + (f" ({', '.join(extra)})" if extra else "")


# The candidate the numbers are expected to favour (bench/bench_vae.py row "fp16-mixed + channels-last +
# cudnn.benchmark": on CPU with random weights fp16 kept 56 dB where bf16 kept 38); not the default
# until the GPU PSNR (>= 45 dB, ideally with real weights: --vae-dir) confirms it.
FAST_SPEED = VaeSpeed("fp16-mixed", channels_last=True, cudnn_benchmark=True)
DEFAULT_SPEED = VaeSpeed()  # the one-line switch: DEFAULT_SPEED = FAST_SPEED


def speed_settings(cfg) -> VaeSpeed:
    raw = cfg.get("vae_dtype", DEFAULT_SPEED.dtype)
    mode = _SPELLINGS.get(str(raw).strip().lower() if isinstance(raw, str) else raw)
    if mode is None:
        raise ConfigError(f"vae_dtype must be one of fp32, bf16, fp16, bf16-mixed, fp16-mixed, got {raw!r}")
    flags = {}
    for key, default in (("vae_channels_last", DEFAULT_SPEED.channels_last),
                         ("vae_cudnn_benchmark", DEFAULT_SPEED.cudnn_benchmark),
                         ("vae_compile", DEFAULT_SPEED.compile)):
        value = cfg.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        flags[key] = value
    return VaeSpeed(mode, flags["vae_channels_last"], flags["vae_cudnn_benchmark"], flags["vae_compile"])


def apply_speed(vae, speed: VaeSpeed) -> str:
    """Configure an AutoencoderKLWan in place for `speed`; returns a line for the load report.
    Only the decode path changes; `vae.dtype` stays what the pipeline should hand the latents in."""
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
    vae._decode = _decode_with(vae._decode, speed)
    return speed.describe()


def _decode_with(decode, speed: VaeSpeed):
    @functools.wraps(decode)
    def run(z, *args, **kwargs):
        if speed.channels_last and z.dim() == 5:
            z = z.contiguous(memory_format=torch.channels_last_3d)
        saved = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = speed.cudnn_benchmark or saved
        try:
            if speed.dtype.endswith("-mixed"):  # CUDA on the GPU; CPU autocast runs the same code in tests
                with torch.autocast(z.device.type, dtype=_TORCH[speed.dtype.split("-")[0]]):
                    return decode(z, *args, **kwargs)
            return decode(z, *args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = saved

    return run


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
