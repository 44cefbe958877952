"""Merge LoRA files into full weights before quantization (the converter's --lora_path).

Key layouts are diffusers' business: `WanLoraLoaderMixin.lora_state_dict` turns Wan's original names
(`diffusion_model.blocks.0.self_attn.q.lora_down.weight`: LightX2V and ComfyUI LoRAs), musubi-tuner's
kohya names (`lora_unet_blocks_0_self_attn_q.lora_down.weight`) and diffusers' own names
(`transformer.blocks.0.attn1.to_q.lora_A.weight`) into diffusers names. Before that we give the pairs
the prefix diffusers expects (files also use `model.diffusion_model.`, `model.`, `unet.` or none) and
fold each pair's scale into its down weight: alpha/rank from the file, else --lora_alpha (default 1),
the same rule in every layout. Full-weight differences `<base>.diff` / `<base>.diff_b` stay ours:
diffusers drops them (norms) or leaves them unmerged (weights).
Delta = strength * up @ down, or strength * --lora_alpha * diff.
"""
from __future__ import annotations

import logging

import torch
from diffusers.loaders import WanLoraLoaderMixin

from .checkpoint.keymaps import detect_naming, wan_to_diffusers
from .checkpoint.sources import TensorSource
from .errors import CheckpointError

log = logging.getLogger("engine.lora")
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.", "unet.", "transformer.")
_PAIRS = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"))
_KOHYA = "lora_unet_"  # musubi-tuner: the module path with "_" for ".", then .lora_down/.lora_up/.alpha


def _strip(name: str) -> str:
    for p in _PREFIXES:
        if name.startswith(p):
            return name[len(p):]
    return name


def _canonical(name: str) -> str:
    return wan_to_diffusers(_strip(name))  # diffusers names pass through unchanged


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
        used, pairs = set(), {}
        for key in keys:
            for suffix, target in ((".diff", ".weight"), (".diff_b", ".bias")):
                if key.endswith(suffix):
                    self._add(key[:-len(suffix)] + target, ("diff", f"LoRA {src.file_of(key)} ({key!r}",
                                                            src.get(key), None, alpha, strength))
                    used.add(key)
            for down_s, up_s in _PAIRS:
                if key.endswith(down_s) and key[:-len(down_s)] + up_s in keys:
                    base = key[:-len(down_s)]
                    pairs[base] = (key, base + up_s, base + ".alpha" if base + ".alpha" in keys else None)
                    used |= {key, base + up_s, base + ".alpha"}
        for module, (down, up) in _normalise(path, src, pairs, alpha).items():
            self._add(module + ".weight", ("pair", f"LoRA {path} ({module!r} after diffusers' key mapping",
                                           down, up, 1.0, strength))
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
        for kind, what, t1, t2, scale, strength in entries:
            where = f"{what}, for {key!r})"
            if kind == "pair":
                down, up = t1.to(out.device, torch.float32), t2.to(out.device, torch.float32)
                if down.dim() < 2 or up.dim() < 2 or up.flatten(1).shape[1] != down.shape[0]:
                    raise CheckpointError(f"{where}: down {list(down.shape)} and up {list(up.shape)} do not "
                                          "multiply (their rank differs): the LoRA file is corrupt")
                delta = up.flatten(1) @ down.flatten(1)
                if delta.numel() != out.numel() or delta.shape[0] != out.shape[0]:
                    raise CheckpointError(f"{where} changes a {list(out.shape)} weight by {list(delta.shape)}: "
                                          "the LoRA is for a different model")
                delta = delta.reshape(out.shape)
            else:
                delta = t1.to(out.device, torch.float32)
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


def _normalise(path, src, pairs: dict, alpha: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{base: (down key, up key, alpha key or None)} -> {diffusers module: (down * alpha/rank, up)}.
    We fold the scale ourselves: diffusers folds alpha only inside the blocks and refuses it elsewhere
    (head, embeddings), so it gets pairs to rename (and musubi's layout a neutral alpha = rank)."""
    if not pairs:
        return {}
    kohya = all(b.startswith(_KOHYA) for b in pairs)
    wan = not kohya and detect_naming([_strip(b) + ".weight" for b in pairs]) in ("wan", "mixed")
    prefix = "" if kohya else "diffusion_model." if wan else "transformer."
    down_s, up_s = (".lora_down.weight", ".lora_up.weight") if kohya else (".lora_A.weight", ".lora_B.weight")
    sd = {}
    for base, (down_k, up_k, alpha_k) in pairs.items():
        down, up = src.get(down_k).to(torch.float32, copy=True), src.get(up_k).to(torch.float32, copy=True)
        if down.dim() < 2 or up.dim() < 2:
            raise CheckpointError(f"LoRA {src.file_of(down_k)} ({down_k!r}): down {list(down.shape)} and up "
                                  f"{list(up.shape)} are not matrices: the LoRA file is corrupt")
        rank = down.shape[0]
        a = _alpha(src.get(alpha_k), f"LoRA {src.file_of(alpha_k)} ({alpha_k!r})") if alpha_k else rank * alpha
        name = prefix + (base if kohya else _strip(base))
        sd.update({name + down_s: down * (a / rank), name + up_s: up})
        if kohya:
            sd[name + ".alpha"] = torch.tensor(float(rank))
    try:
        out = WanLoraLoaderMixin.lora_state_dict(sd)
    except (KeyError, ValueError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"LoRA {path}: diffusers cannot map its layer names onto the Wan transformer "
                              f"({type(e).__name__}: {str(e)[:300]}); it is for another model, or holds layers "
                              "diffusers' Wan LoRA loader does not know") from None
    return {key[:-len(".lora_A.weight")].removeprefix("transformer."): (down, out[key[:-len("A.weight")] + "B.weight"])
            for key, down in out.items() if key.endswith(".lora_A.weight")}


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
