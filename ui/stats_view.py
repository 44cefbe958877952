"""Run statistics as a short Markdown table (the raw dict goes to a JSON view behind an accordion)."""
from __future__ import annotations

COMPONENT_LABELS = {"transformer": "DiT", "transformer_2": "DiT (low-noise expert)", "text_encoder": "T5",
                    "image_encoder": "CLIP", "vae": "VAE"}


def stats_table(stats: dict) -> str:
    def seconds(key, empty="—"):
        value = stats.get(key)
        return empty if value is None else f"{value:.2f} s"

    per_step = stats.get("per_step_s") or []
    step = (f"{stats['mean_step_s']:.2f} s (mean of {len(per_step)}: "
            f"{', '.join(f'{s:.2f}' for s in per_step[:8])}{' …' if len(per_step) > 8 else ''})"
            if per_step else "—")
    peak = stats.get("peak_gpu_mem_GiB")
    rows = [
        ("Time per step", step),
        ("Text/image encoding", seconds("encode_s")),
        ("VAE decode", seconds("decode_s")),
        ("Model load", seconds("load_s", "— (already loaded)")),
        ("Download", "none (all files in the cache)" if not stats.get("download_s") else seconds("download_s")),
        ("Total (this video)", seconds("total_s")),
        ("Peak GPU memory", f"{peak:.2f} GiB" if peak is not None else f"— (ran on {stats.get('device', 'CPU')})"),
        ("Offload", stats.get("offload") or "none"),
    ]
    out = ["| This run | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    weights = stats.get("weights_MiB") or {}
    if weights:
        out += ["", "| Weights | MiB |", "|---|---:|"]
        out += [f"| {COMPONENT_LABELS.get(k, k)} | {v:,.2f} |" for k, v in weights.items()]
    kernels = stats.get("kernels") or {}
    if kernels:
        out += ["", "| Component | Format: kernel | Layer types |", "|---|---|---|"]
        for comp, layers in kernels.items():
            groups: dict[str, list[str]] = {}
            for layer, kernel in layers.items():
                groups.setdefault(kernel, []).append(layer)
            for kernel, names in groups.items():
                shown = ", ".join(f"`{n}`" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                out.append(f"| {_nowrap(COMPONENT_LABELS.get(comp, comp))} | {_nowrap(kernel)} | {shown} |")
    return "\n".join(out)


def _nowrap(text: str) -> str:
    return text.replace(" ", "&nbsp;")  # short cells stay on one line; the layer list takes the wrapping
