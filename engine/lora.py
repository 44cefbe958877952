"""Merge LoRA files into full weights before quantization (the converter's --lora_path).

Understood: `<base>.lora_down.weight`/`.lora_up.weight`, `<base>.lora_A.weight`/`.lora_B.weight`
(optionally `<base>.alpha`), and full-weight differences `<base>.diff` / `<base>.diff_b`, with the
prefixes `diffusion_model.`, `model.diffusion_model.`, `model.`, `unet.`, `transformer.`; base names in
Wan or diffusers naming. Delta = strength * scale * up @ down, where scale is alpha/rank when the file
gives a per-layer alpha, else --lora_alpha (default 1).
"""
from __future__ import annotations

import logging

import torch

from .checkpoint.sources import TensorSource
from .errors import CheckpointError
from .checkpoint.keymaps import wan_to_diffusers

log = logging.getLogger("engine.lora")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "unet.", "transformer.")
_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))


def _canonical(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            name = name[len(p):]
            break
    return wan_to_diffusers(name)  # diffusers names pass through unchanged


class LoraSet:
    """Deltas from one or more LoRA files, looked up by the target weight's key (either naming)."""

    def __init__(self, paths, alphas=None, strengths=None):
        paths = list(paths or [])
        alphas = _per_file(alphas, len(paths), "lora_alpha")
        strengths = _per_file(strengths, len(paths), "lora_strength")
        self._deltas: dict[str, list] = {}
        self.unused: set[str] = set()
        for path, alpha, strength in zip(paths, alphas, strengths):
            self._read(path, alpha, strength)
        self.applied = 0

    def _read(self, path, alpha, strength):
        src = TensorSource(path)
        keys = set(src.keys())
        used = set()
        for key in keys:
            for down_s, up_s in _PAIRS:
                if key.endswith(down_s) and key[:-len(down_s)] + up_s in keys:
                    base = key[:-len(down_s)]
                    a = src.get(base + ".alpha") if base + ".alpha" in keys else None
                    self._add(base + ".weight", ("pair", src, key, base + up_s, a, alpha, strength))
                    used |= {key, base + up_s} | ({base + ".alpha"} if a is not None else set())
            for suffix, target in ((".diff", ".weight"), (".diff_b", ".bias")):
                if key.endswith(suffix):
                    self._add(key[:-len(suffix)] + target, ("diff", src, key, None, None, alpha, strength))
                    used.add(key)
        self.unused |= {f"{path}:{k}" for k in keys - used}

    def _add(self, target, entry):
        self._deltas.setdefault(_canonical(target), []).append(entry)

    def __len__(self):
        return len(self._deltas)

    def apply(self, key: str, weight: torch.Tensor) -> torch.Tensor:
        entries = self._deltas.get(_canonical(key))
        if not entries:
            return weight
        out = weight.to(torch.float32).clone()
        for kind, src, k1, k2, file_alpha, alpha, strength in entries:
            where = f"LoRA {src.file_of(k1)} ({k1!r}, for {key!r})"
            if kind == "pair":
                down, up = src.get(k1).to(out.device, torch.float32), src.get(k2).to(out.device, torch.float32)
                if down.dim() < 2 or up.dim() < 2 or up.flatten(1).shape[1] != down.shape[0]:
                    raise CheckpointError(f"{where}: down {list(down.shape)} and up {list(up.shape)} do not "
                                          "multiply (their rank differs): the LoRA file is corrupt")
                scale = _alpha(file_alpha, where) / down.shape[0] if file_alpha is not None else alpha
                delta = up.flatten(1) @ down.flatten(1)
                if delta.numel() != out.numel() or delta.shape[0] != out.shape[0]:
                    raise CheckpointError(f"{where} changes a {list(out.shape)} weight by {list(delta.shape)}: "
                                          "the LoRA is for a different model")
                delta = delta.reshape(out.shape)
            else:
                delta, scale = src.get(k1).to(out.device, torch.float32), alpha
            if delta.shape != out.shape:
                raise CheckpointError(f"{where} changes a {list(out.shape)} weight by {list(delta.shape)}: "
                                      "the LoRA is for a different model")
            out += strength * scale * delta
            if not bool(torch.isfinite(out).all()):
                raise CheckpointError(f"{where}: merging gives NaN or Inf (the LoRA holds NaN/Inf or its alpha or "
                                      "strength is far too large); check the LoRA file and --lora_alpha/--lora_strength")
        self.applied += 1
        return out.to(weight.dtype)

    def check_targets(self, keys) -> None:
        """Before anything is written: every LoRA layer must match a weight of the model being converted."""
        if not self._deltas:
            raise CheckpointError("the LoRA file(s) hold no LoRA weights this engine understands "
                                  "(lora_down/lora_up, lora_A/lora_B or diff)")
        targets = {_canonical(k) for k in keys}
        unmatched = sorted(t for t in self._deltas if t not in targets)
        if len(unmatched) == len(self._deltas):
            raise CheckpointError(f"no LoRA weight matches a weight of the model (e.g. {unmatched[0]!r}): the LoRA "
                                  "is for another model, or its key names are not understood; nothing was written")
        if unmatched:
            log.warning("%d of %d LoRA layers match no weight of the model, e.g. %s", len(unmatched),
                        len(self._deltas), unmatched[0])

    def finish(self):
        if self._deltas and not self.applied:
            raise CheckpointError("no LoRA weight matched a weight of the model: the LoRA is for another model, "
                                  "or its key names are not understood")
        if self.unused:
            log.warning("%d LoRA tensors were not understood, e.g. %s", len(self.unused), sorted(self.unused)[0])
        log.info("merged LoRA into %d weights", self.applied)


def _alpha(value, where) -> float:
    if value.numel() != 1 or not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
        raise CheckpointError(f"{where}: alpha must be one number, got a {value.dtype} tensor of shape {list(value.shape)}")
    a = float(value.reshape(()))
    if a != a or a in (float("inf"), float("-inf")):
        raise CheckpointError(f"{where}: alpha is {a}; the LoRA file is corrupt")
    return a


def _per_file(values, n, name):
    values = list(values) if values else [1.0]
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise CheckpointError(f"--{name} takes one value or one per --lora_path ({n}), got {len(values)}")
    return values
