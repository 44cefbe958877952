"""An independent writer of ComfyUI's comfy_quant layers, from the facts in engine/checkpoint/comfy.py's
docstring (read from ComfyUI and comfy_kitchen). It shares no code with engine/: its own e2m1 rounding,
its own nibble packing (even element high) and its own 128x4 tiling, written the way ComfyUI's
`to_blocked` describes it (tiles of [128 rows, 4 cols], each rearranged as (32, 4, 4) -> (32, 16)).
"""
import json

import torch

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def conf(fmt, **extra):
    return torch.tensor(list(json.dumps({"format": fmt, **extra}).encode()), dtype=torch.uint8)


def to_blocked(m):
    rows, cols = m.shape
    rb, cb = -(-rows // 128), -(-cols // 4)
    padded = torch.zeros(rb * 128, cb * 4, dtype=m.dtype)
    padded[:rows, :cols] = m
    tiles = padded.view(rb, 128, cb, 4).permute(0, 2, 1, 3)  # row of tiles by row of tiles
    return tiles.reshape(-1, 4, 32, 4).transpose(1, 2).reshape(rb * 128, cb * 4)


def fp8(w):
    scale = w.abs().max() / 448.0
    return {"weight": (w / scale).to(torch.float8_e4m3fn), "weight_scale": scale.float(), "comfy_quant": conf("float8_e4m3fn")}


def int8_tensorwise(w):
    scale = w.abs().max() / 127.0
    return {"weight": torch.round(w / scale).clamp(-127, 127).to(torch.int8), "weight_scale": scale.float(),
            "comfy_quant": conf("int8_tensorwise")}


def nvfp4(w, input_absmax=None):
    n, k = w.shape
    per_tensor = w.abs().max() / (448.0 * 6.0)
    blocks = w.reshape(n, k // 16, 16)
    block_scale = (blocks.abs().amax(-1) / 6.0 / per_tensor).clamp(max=448).to(torch.float8_e4m3fn)
    x = blocks / (per_tensor * block_scale.float()).clamp(min=1e-30)[..., None]
    mag = (x.abs()[..., None] - E2M1).abs().argmin(-1)
    code = (mag | ((x < 0) & (mag > 0)).long() << 3).reshape(n, k)
    packed = ((code[:, 0::2] << 4) | code[:, 1::2]).to(torch.uint8)  # even element in the high nibble
    out = {"weight": packed, "weight_scale": to_blocked(block_scale.view(torch.uint8)).view(torch.float8_e4m3fn),
           "weight_scale_2": per_tensor.float(), "comfy_quant": conf("nvfp4")}
    if input_absmax is not None:
        out["input_scale"] = torch.tensor(input_absmax / (448.0 * 6.0))
    return out


def mxfp8(w):
    n, k = w.shape
    blocks = w.reshape(n, k // 32, 32)
    exp = torch.ceil(torch.log2(blocks.abs().amax(-1).clamp(min=2.0 ** -127) / 448.0)).clamp(-127, 127)
    q = (blocks / torch.exp2(exp)[..., None]).to(torch.float8_e4m3fn).reshape(n, k)
    e8m0 = (exp + 127).to(torch.uint8)
    return {"weight": q, "weight_scale": to_blocked(e8m0).view(torch.float8_e8m0fnu), "comfy_quant": conf("mxfp8")}


WRITERS = {"float8_e4m3fn": fp8, "int8_tensorwise": int8_tensorwise, "nvfp4": nvfp4, "mxfp8": mxfp8}


def comfy_state_dict(wan_sd, fmt, select, prefix="model.diffusion_model.", **kw):
    """Wan-named float state dict -> a ComfyUI file's tensors (selected linears quantized)."""
    out = {}
    for key, t in wan_sd.items():
        if key.endswith(".weight") and t.dim() == 2 and select(key):
            layer = key[:-len("weight")]
            for suffix, v in WRITERS[fmt](t.float(), **kw).items():
                out[prefix + layer + suffix] = v
        else:
            out[prefix + key] = t.to(torch.bfloat16) if t.is_floating_point() else t
    return out
