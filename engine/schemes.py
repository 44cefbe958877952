"""Scheme names users write (LightX2V's long `mm_type`s and short `*_quant_scheme`s) -> format + kernel.

A scheme names a number format and, often, the library LightX2V would run it with (vLLM, sgl-kernel,
q8_kernels, DeepGEMM, torchao). Users never have to install those: our own kernel for the format runs,
and one log line says so. New names are added with `register_scheme`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from .errors import SchemeError
from .formats import FORMATS

log = logging.getLogger("engine.schemes")

LIBRARIES = {"vllm": "vLLM", "sgl": "sgl-kernel", "q8f": "q8_kernels", "deepgemm": "DeepGEMM",
             "torchao": "torchao", "marlin": "Marlin"}


@dataclass(frozen=True)
class Scheme:
    name: str
    format: str | None  # None: no quantization (`Default`)
    kernel: str = "auto"  # our kernel preference: auto | torch | triton | emulated
    library: str | None = None  # the external library the name refers to, if any

    @property
    def quantized(self) -> bool:
        return self.format is not None

    def describe(self) -> str:
        if not self.quantized:
            return f"{self.name}: no quantization"
        lib = f"; LightX2V would use {LIBRARIES[self.library]}, this engine runs its own kernels" if self.library else ""
        return f"{self.name}: format {self.format}, kernel preference {self.kernel}{lib}"


SCHEMES: dict[str, Scheme] = {}
# Names LightX2V knows that this engine deliberately does not run, with what to use instead.
UNSUPPORTED: dict[str, str] = {}


def register_scheme(name: str, fmt: str | None, kernel: str = "auto", library: str | None = None) -> Scheme:
    scheme = Scheme(name, fmt, kernel, library)
    SCHEMES[name.lower()] = scheme
    return scheme


def resolve_scheme(name: str) -> Scheme:
    if not isinstance(name, str) or not name.strip():
        raise SchemeError(f"a quantization scheme must be a non-empty string, got {name!r}")
    scheme = SCHEMES.get(name.strip().lower())
    if scheme is not None:
        if scheme.library:
            log.info("%s: running this engine's %s kernel instead of %s (no native package needed)",
                     name, scheme.format, LIBRARIES[scheme.library])
        return scheme
    key = name.strip().lower()
    for prefix, advice in UNSUPPORTED.items():
        if key == prefix or key.startswith(prefix):
            raise SchemeError(f"scheme {name!r} is a LightX2V scheme this engine does not run: {advice}")
    raise SchemeError(f"unknown quantization scheme {name!r}. Valid names: {', '.join(valid_names())}")


def valid_names() -> list[str]:
    return sorted({s.name for s in SCHEMES.values()}, key=str.lower)


# ---- the seed's long mm_type names ------------------------------------------------------------
register_scheme("Default", None)
register_scheme("W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Vllm", "fp8", library="vllm")
register_scheme("W-int8-channel-sym-A-int8-channel-sym-dynamic-Vllm", "int8", library="vllm")
register_scheme("W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Q8F", "fp8", library="q8f")
register_scheme("W-int8-channel-sym-A-int8-channel-sym-dynamic-Q8F", "int8", library="q8f")
register_scheme("W-fp8-block128-sym-A-fp8-channel-group128-sym-dynamic-Deepgemm", "fp8_block128", library="deepgemm")
register_scheme("W-fp8-channel-sym-A-fp8-channel-sym-dynamic-Sgl", "fp8", library="sgl")

# ---- LightX2V's short names (DiT and encoders) ------------------------------------------------
for _fmt in ("fp8", "int8"):
    register_scheme(f"{_fmt}-vllm", _fmt, library="vllm")
    register_scheme(f"{_fmt}-sgl", _fmt, library="sgl")
    register_scheme(f"{_fmt}-q8f", _fmt, library="q8f")
    register_scheme(f"{_fmt}-triton", _fmt, kernel="triton")
    register_scheme(f"{_fmt}-torchao", _fmt, library="torchao")
    register_scheme(f"{_fmt}-torch", _fmt, kernel="torch")
    register_scheme(_fmt, _fmt)  # encoders' `quant_scheme: int8|fp8` (vLLM in LightX2V)
register_scheme("fp8-b128-deepgemm", "fp8_block128", library="deepgemm")
register_scheme("none", None)
for _fmt, _f in FORMATS.items():  # each format's LightX2V spelling (fp8-block128, ...) and our own name
    for _name in (_f.label, _fmt):
        if _name.lower() not in SCHEMES:
            register_scheme(_name, _fmt)

UNSUPPORTED.update({
    "int4-g128-marlin": "int4 weight-only needs Marlin kernels this engine does not ship; use int8 (same hardware) "
                        "or nvfp4 on Blackwell.",
    "mxfp6": "mixed MXFP6 weights are not implemented; use mxfp8 (8-bit) or nvfp4/mxfp4 (4-bit).",
    "gguf": "GGUF files are a llama.cpp-style format this engine does not load; use int8 or fp8.",
})
