"""The models the app offers: where each one's files live on the Hub and what it needs.

A quantized DiT replaces only the transformer weights; the VAE, tokenizer, scheduler and configs
still come from the diffusers base repo (REFERENCE.md §2). LightX2V publishes 4-step distilled
DiTs (4 steps, no classifier-free guidance, shift 5) in bf16, fp8 and int8.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError

DISTILL_21 = "lightx2v/Wan2.1-Distill-Models"
DISTILL_22 = "lightx2v/Wan2.2-Distill-Models"
ENCODERS = "lightx2v/Encoders-Lightx2v"
# Light decoders (engine/vae): LightVAE for the Wan2.1 VAE's latents (also used by Wan2.2 A14B), and
# LightTAE files per latent width: 16 channels (Wan2.1 VAE) or 48 (Wan2.2 TI2V-5B VAE).
AUTOENCODERS = "lightx2v/Autoencoders"
LIGHT_VAE_FILE = "lightvaew2_1.safetensors"
TINY_VAE_FILES = {16: "lighttaew2_1.safetensors", 48: "lighttaew2_2.safetensors"}

# LightX2V's file-name infix per DiT format; for formats without a published file the bf16 distilled
# file (empty infix) is downloaded and quantized on load: never the base repo's non-distilled weights.
DIT_INFIX = {"fp8": "scaled_fp8_e4m3_", "int8": "int8_"}
T5_FILE = "models_t5_umt5-xxl-enc-{fmt}.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14-{fmt}.pth"
ENCODER_FORMATS = ("fp8", "int8")


@dataclass(frozen=True)
class ModelEntry:
    key: str
    label: str
    model_cls: str  # LightX2V's --model_cls: wan2.1 | wan2.2_moe
    task: str  # t2v | i2v
    base_repo: str  # diffusers layout: VAE, tokenizer, scheduler, configs (and bf16 weights)
    dit_params_b: float  # billions of parameters per transformer
    transformers: tuple[str, ...] = ("transformer",)
    distill_repo: str | None = None
    # One LightX2V file stem per transformer, in the order of `transformers`; {infix} is the format part.
    distill_stems: tuple[str, ...] = ()
    uses_clip: bool = False
    default_size: tuple[int, int] = (480, 832)  # height, width
    max_size: tuple[int, int] = (720, 1280)
    notes: str = ""
    extra: dict = field(default_factory=dict)
    # Request defaults (LightX2V keys) of a model without a distilled file: its own base-model sampling.
    # The preset's 4-step / no-CFG values would give noise with a base (non-distilled) transformer.
    base_defaults: dict = field(default_factory=dict)

    @property
    def distilled(self) -> bool:
        return bool(self.distill_stems)

    def schedule(self) -> str:
        """One sentence saying which sampling schedule this model is run with by default."""
        if self.distilled:
            return ("LightX2V 4-step distilled schedule: Euler flow matching at timesteps [1000, 750, 500, 250] "
                    "(shift 5), classifier-free guidance off.")
        d = self.base_defaults
        guidance = d.get("sample_guide_scale")
        cfg = (f"guidance {guidance[0]} (high-noise expert) / {guidance[1]} (low-noise expert)"
               if isinstance(guidance, (list, tuple)) else f"guidance {guidance}")
        return (f"Base model schedule (no distilled file): {d.get('infer_steps')} steps with classifier-free "
                f"{cfg}; the base repo's scheduler and shift are used unchanged.")

    def dit_files(self, fmt: str | None) -> tuple[str, ...] | None:
        """LightX2V's pre-quantized DiT file(s) for `fmt`, or None when none is published."""
        if not self.distilled or fmt not in DIT_INFIX:
            return None
        return tuple(stem.format(infix=DIT_INFIX[fmt]) for stem in self.distill_stems)

    def distilled_bf16_files(self) -> tuple[str, ...]:
        """LightX2V's bf16 distilled DiT file(s) (empty infix): loaded and quantized on load to formats
        without a published file (nvfp4, mxfp8, fp8_block128, ...), or run as they are for bf16."""
        return tuple(stem.format(infix="") for stem in self.distill_stems)


CATALOG: dict[str, ModelEntry] = {}


def _add(entry: ModelEntry) -> None:
    CATALOG[entry.key] = entry


_add(ModelEntry(
    "wan2.1-t2v-1.3b", "Wan2.1 T2V 1.3B (480p)", "wan2.1", "t2v", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 1.3,
    max_size=(480, 832),
    notes="No LightX2V quantized file: the bf16 transformer (2.8 GB) is downloaded and quantized on load.",
    # Wan2.1's own T2V sampling (and diffusers' example): 50 steps, classifier-free guidance 5.0.
    base_defaults={"infer_steps": 50, "sample_guide_scale": 5.0}))
_add(ModelEntry(
    "wan2.1-t2v-14b", "Wan2.1 T2V 14B, 4-step distilled", "wan2.1", "t2v", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 14,
    distill_repo=DISTILL_21, distill_stems=("wan2.1_t2v_14b_{infix}lightx2v_4step.safetensors",)))
_add(ModelEntry(
    "wan2.1-i2v-14b-480p", "Wan2.1 I2V 14B 480P, 4-step distilled", "wan2.1", "i2v",
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 14, distill_repo=DISTILL_21,
    distill_stems=("wan2.1_i2v_480p_{infix}lightx2v_4step.safetensors",), uses_clip=True, max_size=(480, 832)))
_add(ModelEntry(
    "wan2.1-i2v-14b-720p", "Wan2.1 I2V 14B 720P, 4-step distilled", "wan2.1", "i2v",
    "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers", 14, distill_repo=DISTILL_21,
    distill_stems=("wan2.1_i2v_720p_{infix}lightx2v_4step.safetensors",), uses_clip=True,
    default_size=(720, 1280)))
_add(ModelEntry(
    "wan2.2-i2v-a14b", "Wan2.2 I2V A14B (two experts), 4-step distilled", "wan2.2_moe", "i2v",
    "Wan-AI/Wan2.2-I2V-A14B-Diffusers", 14, transformers=("transformer", "transformer_2"),
    distill_repo=DISTILL_22,
    # diffusers' `transformer` is the high-noise expert, `transformer_2` the low-noise one.
    distill_stems=("wan2.2_i2v_A14b_high_noise_{infix}lightx2v_4step.safetensors",
                   "wan2.2_i2v_A14b_low_noise_{infix}lightx2v_4step.safetensors")))
_add(ModelEntry(
    "wan2.2-t2v-a14b", "Wan2.2 T2V A14B (two experts)", "wan2.2_moe", "t2v", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", 14,
    transformers=("transformer", "transformer_2"),
    notes="No LightX2V quantized file: both bf16 transformers (57 GB) are downloaded and quantized on load.",
    # diffusers' documented Wan2.2 T2V A14B call: 40 steps, guidance_scale 4.0, guidance_scale_2 3.0.
    base_defaults={"infer_steps": 40, "sample_guide_scale": [4.0, 3.0]}))


def get_model(key: str) -> ModelEntry:
    if key not in CATALOG:
        raise ConfigError(f"unknown model {key!r}; choose one of: {', '.join(CATALOG)}")
    return CATALOG[key]


def encoder_file(component: str, fmt: str) -> str | None:
    """LightX2V's pre-quantized T5/CLIP file for `fmt` (fp8 or int8), or None."""
    if fmt not in ENCODER_FORMATS:
        return None
    return (T5_FILE if component == "t5" else CLIP_FILE).format(fmt=fmt)


def tiny_vae_file(z_dim: int = 16) -> str:
    if z_dim not in TINY_VAE_FILES:
        raise ConfigError(f"no LightTAE file for {z_dim}-channel latents (there are files for "
                          f"{', '.join(map(str, TINY_VAE_FILES))})")
    return TINY_VAE_FILES[z_dim]


def weight_gb(entry: ModelEntry, dit_bits: int, t5_bits: int = 16) -> float:
    """Rough GPU weight footprint in GB: every transformer, UMT5-XXL encoder (5.7B), CLIP (0.6B), VAE."""
    dit = entry.dit_params_b * len(entry.transformers) * dit_bits / 8
    t5 = 5.7 * t5_bits / 8
    clip = 0.63 * t5_bits / 8 if entry.uses_clip else 0.0
    return dit + t5 + clip + 0.5
