"""Run by tests/test_vae_fused_norm.py with TRITON_INTERPRET=1 (set before triton is imported):
engine/vae/fused_norm.py's kernel, run by the interpreter on the CPU, against diffusers' own WanRMS_norm +
SiLU, and a tiny AutoencoderKLWan decoding the same latents with and without the swap.
Prints one `ok <case> ...` line per case; exits non-zero on the first failure."""
import sys

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.utils import logging as diffusers_logging
from diffusers.models.autoencoders.autoencoder_kl_wan import WanRMS_norm

from engine.vae import fused_norm
from engine.vae.fused_norm import RMSNormSiLU, install_fused_norm, kernel_declines, rms_norm_silu



def round_bf16_to_nearest():
    """The interpreter (triton 3.9's interpreter.cast_impl) converts fp32 to bf16 with rounding_mode None,
    which _convert_float treats as truncation; a GPU's `.to(tl.bfloat16)` rounds to nearest even
    (cvt.rn.bf16.f32). Without this, the bf16 cases would measure the interpreter's rounding, not the
    kernel's. Only that one conversion is replaced, with torch's round-to-nearest-even."""
    import numpy as np
    import triton.language as tl
    import triton.runtime.interpreter as interp

    original = interp._convert_float

    def convert(input, input_dtype, output_dtype, rounding_mode):
        if output_dtype == tl.bfloat16 and input_dtype == tl.float32:
            x = torch.from_numpy(np.ascontiguousarray(input).astype(np.float32))
            return x.to(torch.bfloat16).view(torch.uint16).numpy().reshape(input.shape)
        return original(input, input_dtype, output_dtype, rounding_mode)

    interp._convert_float = convert


UNIT = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # unit roundoff (half an ulp, relative)


def check_kernel(gen):
    """Against fp32 math on the same 16-bit input and 16-bit gamma, the kernel's only 16-bit rounding is
    the final store: |y - ref| <= u * |ref| (round to nearest), plus the fp32 arithmetic's own
    difference from torch's (summation order, exp; a few fp32 ulps, 4e-6 relative covers it) and the
    fp16 subnormal spacing 2^-24 for outputs near zero. Also: never farther from fp32 than diffusers' own
    16-bit module (which rounds three times), in the worst element."""
    for C in (3, 12, 96):
        for dtype in (torch.float16, torch.bfloat16):
            for layout in ("ncthw", "channels_last_3d", "permuted"):
                norm = WanRMS_norm(C, images=False)
                with torch.no_grad():
                    norm.gamma.copy_(1 + 0.5 * torch.randn(norm.gamma.shape, generator=gen))
                norm.to(dtype)
                x = (torch.randn(2, C, 3, 5, 7, generator=gen) * 4).to(dtype)
                x[0, :, 0, 0, 0] = 0  # an all-zero pixel: F.normalize's eps path, SiLU(0) = 0
                if layout == "channels_last_3d":
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                elif layout == "permuted":  # the temporal upsample's output: [B, T, C, H, W] memory
                    x = x.permute(0, 2, 1, 3, 4).contiguous().permute(0, 2, 1, 3, 4)
                assert kernel_declines(x) is None, kernel_declines(x)
                y = rms_norm_silu(x, norm.gamma, norm.bias, norm.scale)
                assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride(), (y.dtype, y.stride())
                ref = F.silu(F.normalize(x.float(), dim=1) * norm.scale * norm.gamma.float())
                ours = (y.float() - ref).abs()
                bound = UNIT[dtype] * ref.abs() + 4e-6 * ref.abs() + 2.0**-24
                assert (ours <= bound).all(), f"C={C} {dtype} {layout}: worst excess {(ours - bound).max().item()}"
                theirs = (F.silu(norm(x)).float() - ref).abs()  # diffusers in 16 bits
                assert ours.max() <= theirs.max(), (ours.max().item(), theirs.max().item())
                module = RMSNormSiLU(norm)  # the module path, and its fallback on fp32 input
                assert torch.equal(module(x), y)
                assert torch.allclose(module(x.float()), F.silu(norm.float()(x.float())), atol=0, rtol=0)
                print(f"ok kernel C={C} {str(dtype)[6:]} {layout}: max err {ours.max().item():.2e} "
                      f"(diffusers 16-bit {theirs.max().item():.2e})")

    # the -mixed modes: fp16 activations under autocast, gamma kept fp32; diffusers' output is then fp32
    norm = WanRMS_norm(12, images=False)
    x = torch.randn(1, 12, 2, 3, 4, generator=gen).to(torch.float16)
    with torch.no_grad():
        norm.gamma.copy_(1 + 0.5 * torch.randn(norm.gamma.shape, generator=gen))
    y = RMSNormSiLU(norm)(x)
    ref = F.silu(norm(x))
    assert y.dtype == ref.dtype == torch.float32, (y.dtype, ref.dtype)
    # diffusers rounds to fp16 twice before the fp32 gamma (the normalized x, then `* scale`, a Python
    # float): relative 2u on the pre-activation `pre`; SiLU's slope is at most 1.1: |y - ref| <= 2.2 u |pre|
    pre = F.normalize(x.float(), dim=1) * norm.scale * norm.gamma
    bound = 2.2 * UNIT[torch.float16] * pre.abs() + 4e-6 * ref.abs() + 1e-7
    assert ((y - ref).abs() <= bound).all(), (y - ref).abs().max()
    print(f"ok kernel fp16 in, fp32 gamma (autocast): fp32 out, max diff {(y - ref).abs().max().item():.2e}")

    # H and W that do not flatten (every other row): the kernel declines, the module runs diffusers' code
    x = torch.randn(1, 12, 2, 4, 3, generator=gen).to(torch.float16)[:, :, :, ::2]
    assert "do not flatten" in kernel_declines(x)
    assert torch.equal(RMSNormSiLU(norm.half())(x), F.silu(norm(x)))
    print("ok kernel declines a strided W: diffusers' code runs")


def tiny_vae(gen):
    vae = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval().requires_grad_(False)
    with torch.no_grad():  # gammas away from their ones init, so the fused scale * gamma matters
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return vae


def psnr(a, b):
    mse = (a.float() - b.float()).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # range [-1, 1]


def check_decode(gen):
    """The same latents through the tiny VAE in fp16/bf16, with and without the swap, against the fp32
    decode. Bound: the swap changes each norm's output by at most one rounding (check_kernel), the same
    size as the roundings the 16-bit decode already makes everywhere, so the swapped decode must be as
    close to fp32 as the unswapped one: PSNR against fp32 within 1 dB of the unswapped's, and the two
    16-bit decodes' largest difference at most twice the unswapped decode's largest error."""
    calls = {"kernel": 0, "channels_last": 0, "permuted": 0}

    def counted(x, *args, **kwargs):  # RMSNormSiLU.forward looks the kernel up by this module-level name
        calls["kernel"] += 1
        calls["channels_last"] += x.stride(1) == 1
        calls["permuted"] += x.stride(1) > x.stride(2)
        return rms_norm_silu(x, *args, **kwargs)

    fused_norm.rms_norm_silu = counted
    base = tiny_vae(gen)
    z = torch.randn(1, 4, 3, 6, 6, generator=gen)
    with torch.no_grad():
        ref = base.decode(z).sample
        for dtype in (torch.float16, torch.bfloat16):
            for channels_last in (False, True):
                plain = tiny_vae(torch.Generator().manual_seed(0))
                plain.load_state_dict(base.state_dict())
                plain.to(dtype)
                fused = tiny_vae(torch.Generator().manual_seed(0))
                fused.load_state_dict(base.state_dict())
                fused.to(dtype)
                swapped, why = install_fused_norm(fused)
                assert why is None and swapped > 0, why
                zz = z.to(dtype)
                if channels_last:
                    for vae in (plain, fused):
                        for m in vae.modules():
                            if isinstance(m, torch.nn.Conv3d):
                                m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last_3d)
                    zz = zz.contiguous(memory_format=torch.channels_last_3d)
                calls.update(kernel=0, channels_last=0, permuted=0)
                a, b = plain.decode(zz).sample, fused.decode(zz).sample
                # every swapped norm ran the kernel, once per latent frame (the decode goes frame by frame)
                assert calls["kernel"] == swapped * z.shape[2], (calls, swapped)
                # (CPU Conv3d hands back NCTHW even for channels-last weights and input, so the
                # channels-last decode need not reach the kernel in that layout here; check_kernel covers it)
                if not channels_last:  # the temporal upsample's permuted output reaches the next block's norm1
                    assert calls["permuted"] > 0, calls
                assert b.dtype == dtype and b.shape == ref.shape
                p_plain, p_fused = psnr(a, ref), psnr(b, ref)
                err_plain = (a.float() - ref).abs().max().item()
                diff = (a.float() - b.float()).abs().max().item()
                assert p_fused >= p_plain - 1.0, (p_fused, p_plain)
                assert diff <= 2 * err_plain, (diff, err_plain)
                print(f"ok decode {str(dtype)[6:]} {'channels-last' if channels_last else 'ncthw'}: PSNR vs fp32 "
                      f"fused {p_fused:.1f} dB, unfused {p_plain:.1f} dB; max |fused - unfused| {diff:.2e}; "
                      f"{calls['kernel']} kernel calls ({calls['channels_last']} channels-last, {calls['permuted']} permuted)")


def main():
    round_bf16_to_nearest()
    diffusers_logging.set_verbosity_error()  # .to(fp16) warns about fp32 modules on every copy
    gen = torch.Generator().manual_seed(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    check_kernel(gen)
    check_decode(gen)


if __name__ == "__main__":
    main()
