"""Quantize the parts of a diffusers Wan pipeline that a QuantConfig names (mixed schemes allowed)."""
from __future__ import annotations

from .apply import QuantReport, quantize_model
from .config import QuantConfig

# Pipeline attribute -> config component. Wan2.2 A14B has a second transformer: it is quantized too.
COMPONENT_OF = {"transformer": "dit", "transformer_2": "dit", "text_encoder": "t5", "image_encoder": "clip"}


def quantize_pipeline(pipe, cfg: QuantConfig, work_device=None) -> dict[str, QuantReport]:
    """work_device: where to quantize (layer by layer; see quantize_model), e.g. the GPU."""
    reports = {}
    for attr, comp in COMPONENT_OF.items():
        module = getattr(pipe, attr, None)
        quant = getattr(cfg, comp)
        if module is None or not (quant.quantized or quant.rules):
            continue
        reports[attr] = quantize_model(module, quant.scheme, work_device=work_device, layer_rules=quant.rules,
                                       rules_key=f"{comp}_layer_schemes",
                                       scheme_key="dit_quant_scheme" if comp == "dit" else f"{comp}_quant_scheme")
        if attr == "text_encoder":
            from .checkpoint.encoders import fix_t5_wo_cast

            fix_t5_wo_cast(module)  # transformers would cast T5's FFN input to an fp8 `wo.weight` dtype
    return reports
