"""An independent writer of LightX2V-layout tensors, written from REFERENCE.md §1 for the tests.

It shares no code with engine/ (not the formats, not the swizzle, not the key maps), so a file it
writes checks the loader against the reference description rather than against itself.
"""
import torch

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def int8_channel(w):
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-5) / 127.0
    return {"weight": torch.clamp(torch.round(w / scale), -128, 127).to(torch.int8), "weight_scale": scale.float()}


def fp8_channel(w):
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 448.0
    return {"weight": (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn), "weight_scale": scale.float()}


def fp8_block128(w):
    n, k = w.shape
    sr, sc = -(-n // 128), -(-k // 128)
    scale = torch.empty(sr, sc)
    q = torch.empty(n, k, dtype=torch.float8_e4m3fn)
    for i in range(sr):
        for j in range(sc):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = blk.abs().max().clamp(min=1e-12) / 448.0
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = (blk / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    return {"weight": q, "weight_scale": scale}


def swizzle_128x4(s):
    """cuBLAS block-scaling layout, element by element: tile (r//128, c//4) in row-major tile order,
    inside a tile (r, c) -> (r % 32) * 16 + (r % 128 // 32) * 4 + c % 4."""
    rows, cols = s.shape
    pr, pc = -(-rows // 128) * 128, -(-cols // 4) * 4
    raw = s.view(torch.uint8)
    flat = torch.zeros(pr * pc, dtype=torch.uint8)
    tiles_per_row = pc // 4
    for r in range(rows):
        for c in range(cols):
            tile = (r // 128) * tiles_per_row + c // 4
            flat[tile * 512 + (r % 32) * 16 + (r % 128 // 32) * 4 + c % 4] = raw[r, c]
    return flat.reshape(pr, pc)


def mxfp8(w):
    plain = mxfp8_plain(w)
    return {"weight": plain["weight"], "weight_scale": swizzle_128x4(plain["weight_scale"])}


def mxfp8_plain(w):
    """MXFP8 with its e8m0 scale bytes as a plain [N, K/32] matrix (the file swizzles it)."""
    n, k = w.shape
    blocks = w.reshape(n, k // 32, 32)
    amax = blocks.abs().amax(-1)
    exp = torch.ceil(torch.log2(amax.clamp(min=2.0 ** -127) / 448.0)).clamp(-127, 127)
    q = (blocks / torch.exp2(exp)[..., None]).clamp(-448, 448).to(torch.float8_e4m3fn).reshape(n, k)
    e8m0 = (exp + 127).to(torch.uint8)  # e8m0 bits are the biased exponent
    return {"weight": q.view(torch.uint8), "weight_scale": e8m0}


def nvfp4(w):
    plain = nvfp4_plain(w)
    return dict(plain, weight_scale=swizzle_128x4(plain["weight_scale"]))


def nvfp4_plain(w):
    """NVFP4 with its e4m3 block scales as a plain [N, K/16] matrix (the file swizzles it)."""
    n, k = w.shape
    gs = 6.0 * 448.0 / w.abs().max()
    blocks = w.reshape(n, k // 16, 16)
    scale = (blocks.abs().amax(-1) / 6.0 * gs).clamp(max=448).to(torch.float8_e4m3fn)
    real = scale.float() / gs
    x = blocks / torch.where(real > 0, real, torch.ones_like(real))[..., None]
    idx = (x.abs()[..., None] - E2M1).abs().argmin(-1)  # nearest magnitude (ties: lower, fine for a test)
    code = (idx | ((x < 0) & (idx > 0)).long() << 3).reshape(n, k)
    packed = (code[:, 0::2] | (code[:, 1::2] << 4)).to(torch.uint8)
    return {"weight": packed, "weight_scale": scale, "weight_global_scale": gs.reshape(1).float()}


WRITERS = {"int8": int8_channel, "fp8": fp8_channel, "fp8_block128": fp8_block128, "mxfp8": mxfp8, "nvfp4": nvfp4}
# The same layers with MX/NV scales unswizzled: what a loader's QuantLinear buffers must hold, bit for bit.
PLAIN_WRITERS = dict(WRITERS, mxfp8=mxfp8_plain, nvfp4=nvfp4_plain)


def quantize_state_dict(sd, fmt, select):
    """sd in Wan naming; `select(key)` says which `<p>.weight` to quantize. Biases to bf16 like LightX2V."""
    out = {}
    for key, t in sd.items():
        if key.endswith(".weight") and t.dim() == 2 and select(key):
            for suffix, v in WRITERS[fmt](t.float()).items():
                out[key[:-len("weight")] + suffix] = v
        else:
            out[key] = t.to(torch.bfloat16) if t.is_floating_point() else t
    return out


def wan_dit_selected(key):
    parts = key.split(".")
    return len(parts) > 2 and parts[2] in ("self_attn", "cross_attn", "ffn")
