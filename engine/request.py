"""A generation request, the bounds it must respect, and its validation.

Wan's VAE compresses 8x in space and 4x in time, and the DiT patches 2x2: height and width must
be multiples of 16, and the frame count 4k+1. Bounds keep a request from exhausting memory or time.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from .errors import EngineError

SIZE_MULTIPLE = 16
MAX_PROMPT_CHARS = 2000
MAX_IMAGE_SIDE = 4096
TASKS = ("t2v", "i2v")


class RequestError(EngineError):
    """A generation request that is malformed or out of bounds; says which field and what is allowed."""


@dataclass(frozen=True)
class Limits:
    max_height: int = 1280
    max_width: int = 1280
    max_frames: int = 121
    max_steps: int = 100
    min_side: int = 32
    name: str = ""  # the model these limits belong to, named in range errors


@dataclass
class VideoRequest:
    prompt: str
    task: str = "t2v"
    negative_prompt: str = ""
    image: Any = None  # a PIL image for i2v
    height: int = 480
    width: int = 832
    num_frames: int = 81
    steps: int = 4
    guidance: float = 1.0  # <= 1 turns classifier-free guidance off (4-step distilled models)
    shift: float | None = 5.0  # None: keep the loaded scheduler's own shift (base models)
    seed: int = 0
    fps: int = 16
    guidance_2: float | None = None  # Wan2.2 A14B's low-noise expert; None: the same as `guidance`

    @classmethod
    def from_lightx2v(cls, cfg: dict, **fields) -> "VideoRequest":
        """Defaults from LightX2V's config keys; explicit fields win."""
        keys = {"target_height": "height", "target_width": "width", "target_video_length": "num_frames",
                "infer_steps": "steps", "sample_guide_scale": "guidance", "sample_shift": "shift", "fps": "fps"}
        values = {ours: cfg[theirs] for theirs, ours in keys.items() if cfg.get(theirs) is not None}
        if isinstance(values.get("guidance"), (list, tuple)):  # Wan2.2 MoE: [high-noise, low-noise]
            pair = list(values["guidance"])
            if len(pair) != 2:
                raise RequestError(f"sample_guide_scale must be a number or [high_noise, low_noise], got {pair}")
            values["guidance"], values["guidance_2"] = pair
        if cfg.get("enable_cfg") is False:
            values["guidance"] = 1.0
            values.pop("guidance_2", None)
        values.update({k: v for k, v in fields.items() if v is not None})
        return cls(**values)


def validate(req: VideoRequest, limits: Limits = Limits(), task: str | None = None) -> VideoRequest:
    """A cleaned copy of the request, or RequestError naming the first bad field."""
    prompt = _text(req.prompt, "prompt")
    if not any(unicodedata.category(ch)[0] not in "CZ" for ch in prompt):  # no letter, mark, number, sign
        raise RequestError("the prompt is empty (or only spaces and control characters): describe the video "
                           "you want")
    negative = _text(req.negative_prompt, "negative prompt")
    if len(prompt) > MAX_PROMPT_CHARS or len(negative) > MAX_PROMPT_CHARS:
        raise RequestError(f"prompts are limited to {MAX_PROMPT_CHARS} characters")
    if req.task not in TASKS:
        raise RequestError(f"task must be one of {', '.join(TASKS)}, got {req.task!r}")
    if task and req.task != task:
        raise RequestError(f"the loaded model does {task}, not {req.task}; load a {req.task} model")
    try:
        height = _int(req.height, "height", limits.min_side, limits.max_height)
        width = _int(req.width, "width", limits.min_side, limits.max_width)
        frames = _int(req.num_frames, "frame count", 1, limits.max_frames)
        steps = _int(req.steps, "steps", 1, limits.max_steps)
    except RequestError as e:
        raise RequestError(f"{e} ({limits.name})" if limits.name else str(e)) from None
    for name, value in (("height", height), ("width", width)):
        if value % SIZE_MULTIPLE:
            lower = max(limits.min_side, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            raise RequestError(f"{name} {value} is not a multiple of {SIZE_MULTIPLE} (the VAE's 8x times the "
                               f"DiT's 2x patches); try {lower} or {lower + SIZE_MULTIPLE}")
    if (frames - 1) % 4:
        lower = (frames - 1) // 4 * 4 + 1
        raise RequestError(f"frame count {frames} is not 4k+1 (the VAE packs 4 frames per latent after the "
                           f"first); try {lower} or {lower + 4}")
    guidance = _float(req.guidance, "guidance", 0.0, 20.0)
    guidance_2 = None if req.guidance_2 is None else _float(req.guidance_2, "guidance 2", 0.0, 20.0)
    shift = None if req.shift is None else _float(req.shift, "shift", 0.1, 20.0)
    seed = _int(req.seed, "seed", 0, 2**32 - 1)
    fps = _int(req.fps, "fps", 1, 60)
    image = req.image
    if req.task == "i2v":
        image = _image(image)
    else:
        image = None
    return replace(req, prompt=prompt, negative_prompt=negative, image=image,
                   height=height, width=width, num_frames=frames, steps=steps, guidance=guidance, shift=shift,
                   seed=seed, fps=fps, guidance_2=guidance_2)


def _text(value, name) -> str:
    """The text without control characters (NUL, escapes, lone surrogates, unassigned code points): a
    tokenizer would drop or garble them. Line breaks and tabs become spaces. Format characters (zero-width
    joiners) stay: some scripts need them; the caller's emptiness check ignores them."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RequestError(f"the {name} must be text, got {type(value).__name__}")
    kept = "".join(" " if ch in "\t\n\r" else ch for ch in value
                   if ch in "\t\n\r" or unicodedata.category(ch) not in ("Cc", "Cs", "Co", "Cn"))
    return kept.strip()


def _refuse_empty_or_bool(value, name, low, high) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):  # an emptied field arrives as null
        raise RequestError(f"{name} is empty: give a number from {low} to {high}")
    # bool is an int in Python: `true` in a JSON request would otherwise run 1 step / 1 frame
    if isinstance(value, bool):
        raise RequestError(f"{name} must be a number, got {str(value).lower()}")


def _int(value, name, low, high) -> int:
    _refuse_empty_or_bool(value, name, low, high)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):  # int() of NaN/inf would raise a bare error
        raise RequestError(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise RequestError(f"{name} must be between {low} and {high}, got {int(number)}")
    return int(number)


def _float(value, name, low, high) -> float:
    _refuse_empty_or_bool(value, name, low, high)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise RequestError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:  # also rejects NaN
        raise RequestError(f"{name} must be between {low} and {high}, got {value!r}")
    return number


def _image(image):
    from PIL import Image

    if image is None:
        raise RequestError("image-to-video needs an input image")
    if not isinstance(image, Image.Image):
        raise RequestError(f"the input image must be a picture, got {type(image).__name__}")
    if max(image.size) > MAX_IMAGE_SIDE or min(image.size) < 1:
        raise RequestError(f"the input image is {image.size[0]}x{image.size[1]}; sides up to {MAX_IMAGE_SIDE} "
                           "pixels are accepted")
    return image.convert("RGB")
