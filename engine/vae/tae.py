"""The decoder half of the TAEHV family (LightX2V's LightTAE files `lighttaew2_1` / `lighttaew2_2`,
madebyollin's `taew2_1` / `taew2_2`), written from the published layout.

Facts the layout rests on (madebyollin/taehv `taehv.py`, LightX2V `models/video_encoders/hf/tae.py`):
- 2D convolutions applied to every frame; "memory" blocks see the current frame and the previous
  frame's input to the same block (zeros before the first frame); "time-grow" 1x1 convolutions turn
  one frame into `stride` frames. Time strides (1, 2, 2) give 4 frames per latent, and the first 3
  are dropped, so T latents become 4T-3 frames: the Wan VAE's count.
- The file's decoder is an nn.Sequential; its positions are the key names (`decoder.3.conv.0.weight`).
- Wan2.1 files: 16 latent channels, RGB out. Wan2.2 (TI2V-5B) files: 48 latent channels and 12
  outputs that a 2x pixel shuffle turns into RGB at twice the size (16x spatial in total).
- Output is in [0, 1]; the input is a latent with no scale/shift for madebyollin's files, while
  LightX2V's `lighttae*` files are fed the un-normalised latent (`need_scaled`, set by LightX2V
  whenever the file name holds "lighttae").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from .files import load_checked, need, read_tensors

TIME_STRIDES = (1, 2, 2)  # Wan: 4 frames per latent
# positions in the decoder Sequential (they are the file's key names)
FIRST_CONV, MEMORY = 1, ((3, 4, 5), (9, 10, 11), (15, 16, 17))
GROW, NARROW, LAST_CONV = (7, 13, 19), (8, 14, 20), 22


def _conv3x3(n_in, n_out, bias=True):
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class MemoryBlock(nn.Module):
    """Residual block over (this frame, previous frame's input)."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(2 * n_in, n_out), nn.ReLU(inplace=True), _conv3x3(n_out, n_out),
                                  nn.ReLU(inplace=True), _conv3x3(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()

    def forward(self, x, past):
        return torch.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TimeGrow(nn.Module):
    def __init__(self, n, stride):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(n, n * stride, 1, bias=False)

    def forward(self, x):
        nt, c, h, w = x.shape
        return self.conv(x).reshape(nt * self.stride, c, h, w)  # frame t -> frames t*s .. t*s+s-1


class TinyDecoder(nn.Module):
    def __init__(self, latent_channels=16, patch=1, widths=(256, 128, 64, 64)):
        super().__init__()
        self.latent_channels, self.patch = latent_channels, patch
        w0, w1, w2, w3 = widths
        layers = [SoftClamp(), _conv3x3(latent_channels, w0), nn.ReLU(inplace=True)]
        for n_in, n_out, stride in ((w0, w1, TIME_STRIDES[0]), (w1, w2, TIME_STRIDES[1]), (w2, w3, TIME_STRIDES[2])):
            layers += [MemoryBlock(n_in, n_in) for _ in range(3)]
            layers += [nn.Upsample(scale_factor=2), TimeGrow(n_in, stride), _conv3x3(n_in, n_out, bias=False)]
        layers += [nn.ReLU(inplace=True), _conv3x3(w3, 3 * patch * patch)]
        self.decoder = nn.Sequential(*layers)
        self.frames_to_trim = 1
        for s in TIME_STRIDES:
            self.frames_to_trim *= s
        self.frames_to_trim -= 1

    @property
    def spatial_scale(self) -> int:
        return 8 * self.patch

    def forward(self, latents: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """latents (N, C, T, H, W) -> video (N, 3, 4T-3, H*s, W*s) in [0, 1]. `chunk`: latent frames
        per pass (None: all at once); the result is the same, peak memory scales with it."""
        x = latents.transpose(1, 2)  # N, T, C, H, W: the layout the blocks work in
        state: list = [None] * len(self.decoder)
        parts = [self._run(part, state) for part in x.split(chunk or x.shape[1], dim=1)]
        video = torch.cat(parts, 1)
        n, t = video.shape[:2]
        video = video.clamp(0, 1)
        if self.patch > 1:
            video = F.pixel_shuffle(video.flatten(0, 1), self.patch).unflatten(0, (n, t))
        return video[:, self.frames_to_trim:].transpose(1, 2)

    def _run(self, x, state):
        n = x.shape[0]
        h = x.flatten(0, 1)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemoryBlock):
                cur = h.unflatten(0, (n, -1))
                prev = state[i] if state[i] is not None else torch.zeros_like(cur[:, :1])
                past = torch.cat([prev, cur[:, :-1]], 1).flatten(0, 1)
                state[i] = cur[:, -1:].clone()  # the next chunk's "previous frame"; clone frees this chunk
                h = layer(h, past)
            else:
                h = layer(h)
        return h.unflatten(0, (n, -1))


def shape_from_file(tensors: dict, path) -> dict:
    """Latent channels, patch size and widths, read from the file's own shapes."""
    first = need(tensors, f"decoder.{FIRST_CONV}.weight", path, "TAEHV-family tiny decoder")
    last = need(tensors, f"decoder.{LAST_CONV}.weight", path, "TAEHV-family tiny decoder")
    widths = [first.shape[0]] + [need(tensors, f"decoder.{i}.weight", path, "TAEHV-family tiny decoder").shape[0]
                                 for i in NARROW]
    patch = round((last.shape[0] / 3) ** 0.5)
    if 3 * patch * patch != last.shape[0]:
        raise CheckpointError(f"{path}: key 'decoder.{LAST_CONV}.weight' has {last.shape[0]} output channels; a "
                              "TAEHV-family decoder has 3 x patch^2 (3 for Wan2.1, 12 for Wan2.2)")
    return dict(latent_channels=first.shape[1], patch=patch, widths=tuple(widths))


def load_tiny_decoder(path, dtype=torch.float32) -> TinyDecoder:
    tensors = read_tensors(path)
    model = TinyDecoder(**shape_from_file(tensors, path))
    want = model.state_dict()
    for i in GROW:  # files trained with more time upscale: keep the last frames' channels (as TAEHV does)
        key = f"decoder.{i}.conv.weight"
        have, rows = tensors.get(key), want[key].shape[0]
        if have is not None and have.shape[0] > rows and have.shape[0] % rows == 0:
            tensors[key] = have[-rows:]
    load_checked(model, tensors, path, lambda k: k, "TAEHV-family tiny decoder", ignore=("encoder.",))
    return model.to(dtype).eval().requires_grad_(False)
