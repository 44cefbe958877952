"""The preset files (presets/*.json), the memory tiers among them, and what each needs: read by
engine.presets (the choice for a GPU) and engine.fit (what fits instead)."""
from __future__ import annotations

import json
from pathlib import Path

from . import memory
from .catalog import ModelEntry
from .config import COMPONENTS
from .errors import ConfigError
from .gpu import GpuInfo
from .kernels import runnable

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    return {p.stem: json.loads(p.read_text()).get("_about", "") for p in sorted(PRESET_DIR.glob("*.json"))}


def load_preset(name: str) -> dict:
    path = PRESET_DIR / f"{name}.json"
    if "/" in name or "\\" in name or not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(list_presets())}")
    return json.loads(path.read_text())


TIERS = ("vram24", "vram16", "vram12")  # fastest first; each adds offloading or tiling (presets/vram*.json)


def preset_runs(name: str, gpu: GpuInfo) -> bool:
    """Every quantized format of preset `name` runs on `gpu` without being asked for by kernel name."""
    from .config import load_config

    cfg = load_config(load_preset(name))
    return all(runnable(getattr(cfg, c).scheme.format, gpu.capability) for c in COMPONENTS if getattr(cfg, c).quantized)


def plan_for(model: ModelEntry | None, config: dict, size: tuple[int, int, int], budget: int | None):
    """engine.memory's estimate for a catalog model (None: Wan2.1 14B t2v) run with a config (preset plus
    overrides), counting the decoder the config chooses."""
    from .catalog import get_model
    from .config import load_config

    arch = memory.arch_of_entry(model or get_model("wan2.1-t2v-14b"))
    cfg = load_config(config)
    return memory.estimate(arch, memory.formats_from_config(cfg), memory.placement_from_config(cfg.raw), *size,
                           budget=budget, decoder=memory.decoder_from_config(cfg.raw))
