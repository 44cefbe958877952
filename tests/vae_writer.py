"""Writes decoder files in their published key layouts, with random weights, for the tests.

Independent of engine/vae: names and shapes come from the published architectures (Wan's original
VAE module tree as LightX2V builds it for LightVAE; the TAEHV nn.Sequential for LightTAE), spelled
out here by hand.
"""
from __future__ import annotations

import torch
from safetensors.torch import save_file


def _rand(gen, *shape, scale=None):
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(*shape, generator=gen) * (scale if scale is not None else fan_in ** -0.5)


def tiny_tensors(latent_channels=16, patch=1, widths=(8, 8, 8, 8), enc_width=8, seed=0, strides=(1, 2, 2)):
    """TAEHV layout: decoder.<position>..., encoder.<position>..."""
    g = torch.Generator().manual_seed(seed)
    t = {}

    def conv(key, n_out, n_in, k=3, bias=True):
        t[f"{key}.weight"] = _rand(g, n_out, n_in, k, k)
        if bias:
            t[f"{key}.bias"] = _rand(g, n_out, scale=0.05)

    def memory(key, n):
        for j in (0, 2, 4):
            conv(f"{key}.conv.{j}", n, 2 * n if j == 0 else n)

    w0, w1, w2, w3 = widths
    conv("decoder.1", w0, latent_channels)
    for (w_in, w_out, stride), mem, grow, narrow in zip(((w0, w1, strides[0]), (w1, w2, strides[1]),
                                                         (w2, w3, strides[2])),
                                                        ((3, 4, 5), (9, 10, 11), (15, 16, 17)), (7, 13, 19),
                                                        (8, 14, 20)):
        for i in mem:
            memory(f"decoder.{i}", w_in)
        conv(f"decoder.{grow}.conv", w_in * stride, w_in, k=1, bias=False)
        conv(f"decoder.{narrow}", w_out, w_in, bias=False)
    conv("decoder.22", 3 * patch * patch, w3)
    e = enc_width
    conv("encoder.0", e, 3 * patch * patch)
    for pool, down, mems, stride in ((2, 3, (4, 5, 6), 2), (7, 8, (9, 10, 11), 2), (12, 13, (14, 15, 16), 1)):
        conv(f"encoder.{pool}.conv", e, e * stride, k=1, bias=False)
        conv(f"encoder.{down}", e, e, bias=False)
        for i in mems:
            memory(f"encoder.{i}", e)
    conv("encoder.17", latent_channels, e)
    return t


def light_tensors(base=4, z_dim=16, seed=0):
    """Wan's original VAE tree (dim_mult [1, 2, 4, 4], two residual blocks per level, temporal down
    [False, True, True]), the layout of lightvaew2_1 (base 24) and Wan2.1_VAE (base 96)."""
    g = torch.Generator().manual_seed(seed)
    t = {}

    def conv3d(key, n_out, n_in, k=(3, 3, 3)):
        t[f"{key}.weight"] = _rand(g, n_out, n_in, *k)
        t[f"{key}.bias"] = _rand(g, n_out, scale=0.05)

    def norm(key, n, images=False):
        t[f"{key}.gamma"] = 1 + 0.1 * torch.randn((n, 1, 1, 1) if not images else (n, 1, 1), generator=g)

    def residual(key, n_in, n_out):
        norm(f"{key}.residual.0", n_in)
        conv3d(f"{key}.residual.2", n_out, n_in)
        norm(f"{key}.residual.3", n_out)
        conv3d(f"{key}.residual.6", n_out, n_out)
        if n_in != n_out:
            conv3d(f"{key}.shortcut", n_out, n_in, k=(1, 1, 1))

    def middle(key, n):
        residual(f"{key}.0", n, n)
        norm(f"{key}.1.norm", n, images=True)
        conv3d(f"{key}.1.to_qkv", 3 * n, n, k=(1, 1))
        conv3d(f"{key}.1.proj", n, n, k=(1, 1))
        residual(f"{key}.2", n, n)

    mult = [1, 2, 4, 4]
    # encoder
    dims = [base * m for m in [1] + mult]
    conv3d("encoder.conv1", dims[0], 3)
    idx = 0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(2):
            residual(f"encoder.downsamples.{idx}", n_in, n_out)
            n_in, idx = n_out, idx + 1
        if i != 3:
            conv3d(f"encoder.downsamples.{idx}.resample.1", n_out, n_out, k=(3, 3))
            if [False, True, True][i]:
                conv3d(f"encoder.downsamples.{idx}.time_conv", n_out, n_out, k=(3, 1, 1))
            idx += 1
    middle("encoder.middle", dims[-1])
    norm("encoder.head.0", dims[-1])
    conv3d("encoder.head.2", 2 * z_dim, dims[-1])
    conv3d("conv1", 2 * z_dim, 2 * z_dim, k=(1, 1, 1))
    conv3d("conv2", z_dim, z_dim, k=(1, 1, 1))
    # decoder
    dims = [base * m for m in [mult[-1]] + mult[::-1]]
    conv3d("decoder.conv1", dims[0], z_dim)
    middle("decoder.middle", dims[0])
    idx = 0
    for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
        if i > 0:
            n_in //= 2  # the previous level's upsample halved the channels
        for _ in range(3):
            residual(f"decoder.upsamples.{idx}", n_in, n_out)
            n_in, idx = n_out, idx + 1
        if i != 3:
            conv3d(f"decoder.upsamples.{idx}.resample.1", n_out // 2, n_out, k=(3, 3))
            if [True, True, False][i]:
                conv3d(f"decoder.upsamples.{idx}.time_conv", 2 * n_out, n_out, k=(3, 1, 1))
            idx += 1
    norm("decoder.head.0", dims[-1])
    conv3d("decoder.head.2", 3, dims[-1])
    return t


def write(path, tensors: dict) -> str:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return str(path)
