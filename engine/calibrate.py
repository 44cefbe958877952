"""NVFP4 calibration: run a few prompts through a Wan pipeline and record each DiT linear's input absmax.

NVFP4 quantizes activations with a static global scale (LightX2V: input_global_scale = 6*448/absmax),
so the range of every quantized layer's input must be measured beforehand. Forward pre-hooks on the
linears that WAN_DIT_RULES select (in `transformer` and, for Wan2.2 A14B, `transformer_2`) keep the
max |x| over every call; the result is written as LightX2V's calib.pt, {"absmax": {layer: tensor}},
with Wan (LightX2V) layer names plus `.weight` -- the key layout load_dit and the converter read.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from torch import nn

from .apply import WAN_DIT_RULES
from .checkpoint.io import save_torch
from .errors import EngineError
from .checkpoint.keymaps import diffusers_to_wan

log = logging.getLogger("engine.calibrate")
TRANSFORMERS = ("transformer", "transformer_2")
_RULES = [re.compile(r) for r in WAN_DIT_RULES]


class AbsmaxRecorder:
    """Forward pre-hooks that keep max |input| per selected linear of one or more DiT modules."""

    def __init__(self):
        self.absmax: dict[str, dict[str, torch.Tensor]] = {}  # component -> Wan layer name -> scalar
        self.calls: dict[str, int] = {}  # component -> forward calls seen
        self._handles = []

    def attach(self, component: str, model: nn.Module) -> int:
        table = self.absmax.setdefault(component, {})
        self.calls.setdefault(component, 0)
        count = 0
        for name, module in model.named_modules():
            # QuantLinear too: calibrating an already-quantized pipeline still measures real inputs.
            if hasattr(module, "in_features") and any(r.fullmatch(name) for r in _RULES):
                key = diffusers_to_wan(name) + ".weight"
                self._handles.append(module.register_forward_pre_hook(self._hook(table, key)))
                count += 1
        self._handles.append(model.register_forward_pre_hook(self._count(component)))
        return count

    def _hook(self, table, key):
        def hook(_module, args):
            x = args[0].detach()
            amax = x.abs().amax().float().cpu() if x.numel() else torch.zeros(())
            if not bool(torch.isfinite(amax)):
                raise EngineError(f"calibration: the input of {key} holds NaN/Inf; the model or its dtype "
                                  "is broken (try float32 or bfloat16 instead of float16)")
            prev = table.get(key)
            table[key] = amax if prev is None else torch.maximum(prev, amax)
        return hook

    def _count(self, component):
        def hook(_module, _args):
            self.calls[component] += 1
        return hook

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def calibrate_pipeline(pipe, prompts: list[str], *, steps: int = 2, height: int | None = None,
                       width: int | None = None, num_frames: int | None = None, seed: int = 0,
                       **call_kwargs) -> dict[str, dict[str, torch.Tensor]]:
    """Run every prompt for `steps` denoising steps; returns {component: {layer.weight: absmax}}.

    The latents are not decoded (output_type="latent"): only the DiT inputs matter. Extra keyword
    arguments go to the pipeline call (e.g. `image=` for image-to-video, `guidance_scale=`).
    """
    if not prompts:
        raise EngineError("calibration needs at least one prompt (e.g. --calibrate_prompts \"a cat walking\")")
    if steps < 1:
        raise EngineError(f"calibration needs at least 1 denoising step, got {steps}")
    rec = AbsmaxRecorder()
    for comp in TRANSFORMERS:
        model = getattr(pipe, comp, None)
        if model is not None and rec.attach(comp, model) == 0:
            raise EngineError(f"calibration: {comp} ({type(model).__name__}) has no linear layers that the Wan "
                              "DiT rules select; is this a Wan pipeline?")
    if not rec.absmax:
        raise EngineError(f"calibration: {type(pipe).__name__} has no transformer; pass a Wan diffusers pipeline")
    sizes = {k: v for k, v in (("height", height), ("width", width), ("num_frames", num_frames)) if v}
    try:
        with torch.inference_mode():
            for i, prompt in enumerate(prompts):
                log.info("calibration prompt %d/%d: %s", i + 1, len(prompts), prompt)
                pipe(prompt=prompt, num_inference_steps=steps, output_type="latent",
                     generator=torch.Generator("cpu").manual_seed(seed + i), **sizes, **call_kwargs)
    finally:
        rec.detach()
    for comp, calls in rec.calls.items():
        if calls == 0:
            # Wan2.2 runs transformer_2 only below its boundary timestep: too few steps skip it.
            raise EngineError(f"calibration: {comp} never ran in {steps} step(s); use more steps "
                              "(--calibrate_steps) so that every transformer sees some timesteps")
    return rec.absmax


def write_calib(path: str | Path, absmax: dict[str, torch.Tensor]) -> Path:
    """LightX2V's calib.pt, written to a temporary name and renamed when complete."""
    path = Path(path)
    save_torch(path, {"absmax": {k: v.reshape(()).float() for k, v in absmax.items()}})
    return path


def calib_name(component: str, primary: str = "transformer") -> str:
    """calib.pt for the transformer being converted (load_dit reads the one beside the checkpoint);
    calib_<component>.pt for the other (Wan2.2's second expert), to pass with --calib when converting it."""
    return "calib.pt" if component == primary else f"calib_{component}.pt"


def load_calibration_pipeline(model_path: str, device: str = "cpu"):
    """A bf16 (fp32 on CPU) pipeline to calibrate: 'tiny' or a diffusers-format Wan folder."""
    if model_path == "tiny":
        from .tiny import build_tiny_pipeline

        pipe = build_tiny_pipeline("t2v")
    else:
        from .builder import build_from_dir
        from .config import QuantConfig

        pipe = build_from_dir(model_path, QuantConfig(), device=device).pipe  # unquantized: real activations
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if model_path == "tiny" else pipe


def calibrate_to_folder(model_path: str, prompts: list[str], out_dir: str | Path, *, steps: int = 2,
                        device: str = "cpu", primary: str = "transformer", **kwargs) -> dict[str, Path]:
    """Calibrate and write one calib file per transformer into out_dir; returns component -> path."""
    pipe = load_calibration_pipeline(model_path, device)
    if model_path == "tiny":
        kwargs.setdefault("max_sequence_length", 64)  # the tiny model's own prompt length (engine.builder)
    tables = calibrate_pipeline(pipe, prompts, steps=steps, **kwargs)
    if primary not in tables:
        raise EngineError(f"{model_path} has no {primary}; it has {', '.join(tables)}")
    written = {comp: write_calib(Path(out_dir) / calib_name(comp, primary), table) for comp, table in tables.items()}
    for comp, path in written.items():
        log.info("calibrated %d layers of %s over %d prompt(s) -> %s", len(tables[comp]), comp, len(prompts), path)
    return written
