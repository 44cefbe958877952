"""Fill a model built on the meta device from file tensors: swap the linears the file holds quantized
for meta QuantLinear of the inferred format, check every key and shape, then load with assign=True.

Shared by the DiT, T5 and CLIP loaders; they only differ in key names (keymaps.py).
"""
from __future__ import annotations

import logging
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from .formats import QUANT_SUFFIXES, candidates, decode_layer, is_quantized_layer
from ..errors import CheckpointError
from ..linear import QuantLinear

log = logging.getLogger("engine.checkpoint")
LINEAR_SUFFIXES = ("weight", "bias") + QUANT_SUFFIXES


@dataclass
class LoadReport:
    path: str
    component: str
    layout: str = ""
    naming: str = ""
    formats: Counter = field(default_factory=Counter)  # format -> number of linear layers
    high_precision: int = 0  # tensors loaded as floating point
    notes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    file_bytes: int = 0
    seconds: float = 0.0

    @property
    def format(self) -> str:
        if not self.formats:
            return "none"
        return "+".join(sorted(self.formats)) if len(self.formats) > 1 else next(iter(self.formats))

    def summary(self) -> str:
        fmts = ", ".join(f"{n} layers {f}" for f, n in sorted(self.formats.items())) or "no quantized layers"
        text = (f"{self.component} from {self.path} ({self.layout}, {self.naming} names, "
                f"{self.file_bytes / 2**30:.2f} GiB): {fmts}; {self.high_precision} tensors in high precision; "
                f"loaded in {self.seconds:.1f} s")
        return text + "".join(f"\n  - {n}" for n in self.notes)


@dataclass
class Decoded:
    """A layer whose format is already settled (e.g. a slice of a fused projection)."""
    fmt: str
    buffers: dict[str, torch.Tensor]


def open_checkpoint(path, component: str):
    """The start of every loader: the tensor source and its report (a failure names the file)."""
    from .sources import TensorSource

    src = TensorSource(path)
    report = LoadReport(path=str(path), component=component, layout=src.layout, file_bytes=src.nbytes(),
                        metadata=dict(src.metadata))
    return src, report


def finish_load(model: nn.Module, state: dict[str, torch.Tensor], device, report: LoadReport, start: float):
    """The end of every loader: assign the mapped tensors, freeze, move, time. Returns (model, report)."""
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{report.path}: the {report.component} tensors do not fit the model "
                              f"({str(e).splitlines()[-1].strip()[:300]}); the checkpoint is for another model or config") from None
    model.eval().requires_grad_(False)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"{device!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type != "cpu":
        try:
            model.to(device)
        except (RuntimeError, AssertionError) as e:
            raise CheckpointError(f"cannot move the {report.component} to {device}: {str(e).splitlines()[0]}") from None
    check_finite(model, report)
    report.seconds = time.perf_counter() - start
    log.info("%s", report.summary())
    return model, report


def check_finite(model: nn.Module, report: LoadReport) -> None:
    """NaN/Inf in a high-precision weight (bf16 DiT, merged LoRA, T5/CLIP) would make every video NaN
    or black without a word: refuse it, naming the tensor. Checked where the tensors now live (on the GPU
    this costs a fraction of a second), in slices so that no full-size mask is ever held."""
    for key, t in model.state_dict().items():
        if not t.is_floating_point() or t.element_size() == 1:  # fp8 codes are checked as scales/formats
            continue
        flat = t.detach().reshape(-1)
        for start in range(0, flat.numel(), 1 << 24):
            if not bool(torch.isfinite(flat[start:start + (1 << 24)]).all()):
                raise CheckpointError(f"{report.path}: tensor {key!r} of the {report.component} holds NaN or Inf; "
                                      "the file is corrupt (or a merged LoRA overflowed): convert it again from "
                                      "the original, or download it again")


def format_of(scheme) -> str | None:
    """A Scheme, a scheme name ("fp8-sgl") or a format name ("fp8") -> the format name, or None."""
    from ..formats import FORMATS
    from ..schemes import resolve_scheme

    if scheme is None:
        return None
    if isinstance(scheme, str):
        return scheme if scheme in FORMATS else resolve_scheme(scheme).format
    return scheme.format


def kernel_of(scheme) -> str:
    """The kernel preference of a Scheme or scheme name ("fp8-triton" -> "triton"); "auto" otherwise."""
    from ..schemes import resolve_scheme

    if isinstance(scheme, str):
        scheme = resolve_scheme(scheme)
    return getattr(scheme, "kernel", None) or "auto"


def group_by_module(tensors: dict[str, object]) -> dict[str, dict[str, object]]:
    groups: dict[str, dict[str, object]] = defaultdict(dict)
    for key, value in tensors.items():
        prefix, _, suffix = key.rpartition(".")
        groups[prefix][suffix] = value
    return groups


ASKED = "the scheme asked for (the config's dit/t5/clip scheme, or the caller's)"


def settle_format(where: str, shapes, dtypes, rows: int, cols: int, hint: str | None, hint_from: str = ASKED) -> str:
    """hint_from says where `hint` came from, so that a mismatch names the real cause."""
    found = candidates(shapes, dtypes, rows, cols)
    described = ", ".join(f"{s} {str(dtypes[s]).replace('torch.', '')}{list(shapes[s])}" for s in sorted(shapes))
    if hint == "fp8_tensor" and {"fp8", "fp8_block128"} & set(found) and shapes.get("weight_scale", (2,)) in ((), (1,), (1, 1)):
        return "fp8_tensor"
    if hint in found:
        return hint
    if hint and found:
        if hint_from != ASKED:
            raise CheckpointError(f"{where}: {hint_from} says {hint} but this layer holds {found[0]} ({described}); "
                                  "the file's metadata is wrong (edited or mixed files): name the scheme explicitly")
        raise CheckpointError(f"{where}: {hint_from} is {hint} but this layer holds {found[0]} "
                              f"({described}). Remove the scheme from the config to use the file's format, "
                              "or pick the checkpoint made for that scheme.")
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(f"{where}: a quantized layer of a {rows}x{cols} linear in no format this engine "
                              f"knows ({described}); the file is corrupt, for another model, or a missing scale")
    raise CheckpointError(f"{where}: ambiguous layer ({described}) fits {' and '.join(found)}; "
                          "name the scheme in the config (e.g. dit_quant_scheme) to choose")


def assemble(model: nn.Module, tensors: dict[str, torch.Tensor | Decoded], file_of, *, hint: str | None,
             dtype: torch.dtype, keep_fp32: tuple[str, ...], report: LoadReport,
             ignorable: tuple[str, ...] = (), hint_from: str = ASKED, kernel: str = "auto") -> dict[str, torch.Tensor]:
    """tensors: model-named keys -> lazily-mapped file tensors (or Decoded layers by module name).
    Swaps quantized linears in `model` (on meta) and returns the state dict to load with assign=True.
    kernel: the scheme's kernel preference (kernel_of), kept by every QuantLinear, as when quantizing."""
    plain: dict[str, torch.Tensor] = {}
    groups = group_by_module({k: v for k, v in tensors.items() if not isinstance(v, Decoded)})
    decoded = {k: v for k, v in tensors.items() if isinstance(v, Decoded)}
    modules = dict(model.named_modules())
    _check_scales_present(groups, file_of)
    for prefix, group in groups.items():
        module = modules.get(prefix)
        dtypes = {s: t.dtype for s, t in group.items()}
        if isinstance(module, nn.Linear) and is_quantized_layer(dtypes) and set(group) <= set(LINEAR_SUFFIXES):
            shapes = {s: tuple(t.shape) for s, t in group.items()}
            where = f"{file_of(prefix + '.weight')} (layer {prefix!r})"
            fmt = settle_format(where, shapes, dtypes, module.out_features, module.in_features, hint, hint_from)
            buffers = decode_layer(fmt, group, module.out_features, module.in_features, where)
            if "bias" in group:
                if not group["bias"].is_floating_point():
                    raise CheckpointError(f"{where}: the bias is {group['bias'].dtype}, not a float: the file is corrupt")
                buffers["bias"] = group["bias"]
            decoded[prefix] = Decoded(fmt, buffers)
        else:
            for suffix, t in group.items():
                plain[f"{prefix}.{suffix}" if prefix else suffix] = t
    state: dict[str, torch.Tensor] = {}
    for prefix, layer in decoded.items():
        module = modules.get(prefix)
        if not isinstance(module, nn.Linear):
            raise CheckpointError(f"{file_of(prefix + '.weight')}: quantized layer {prefix!r} is not a linear layer "
                                  "of this model; the checkpoint is for another model or config")
        quant = QuantLinear(module.in_features, module.out_features, layer.fmt, module.bias is not None,
                            kernel=kernel, device="meta", bias_dtype=dtype, static_input_scale="input_global_scale" in layer.buffers)
        _replace(model, prefix, quant)
        report.formats[layer.fmt] += 1
        for name, t in layer.buffers.items():
            state[f"{prefix}.{name}"] = t.to(dtype) if name == "bias" else t
    for key, t in plain.items():
        want = dtype if not _keeps_fp32(key, keep_fp32) else torch.float32
        if t.is_floating_point() and t.dtype != want:
            t = t.to(want)  # small tensors: norms, embeddings, biases, modulation
        state[key] = t
        report.high_precision += 1
    _check(model, state, file_of, ignorable, report)
    return state


SCALES = ("weight_scale", "scale_weight", "weight_global_scale")


def _check_scales_present(groups, file_of) -> None:
    """A quantized layer without a scale its siblings have is read as another format (fp8 without its
    block scale as plain fp8, nvfp4 without its global scale as mxfp4): silently wrong. When most layers
    with the same weight dtype carry a scale and a few do not, those few are missing it."""
    by_dtype: dict[torch.dtype, list[tuple[str, set]]] = defaultdict(list)
    for prefix, group in groups.items():
        if is_quantized_layer({s: t.dtype for s, t in group.items()}) and "weight" in group:
            by_dtype[group["weight"].dtype].append((prefix, {s for s in group if s in SCALES}))
    for layers in by_dtype.values():
        for scale in SCALES:
            lacking = [p for p, have in layers if scale not in have]
            if lacking and len(lacking) * 2 < len(layers):
                raise CheckpointError(f"{file_of(lacking[0] + '.weight')}: layer {lacking[0]!r} has no {scale} while "
                                      f"{len(layers) - len(lacking)} other layers of its kind have one: a missing scale "
                                      "(the file is incomplete or was edited); convert or download it again")


def _keeps_fp32(key: str, keep_fp32) -> bool:
    return any(re.search(rf"(^|\.){re.escape(m)}(\.|$)", key) for m in keep_fp32)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def _check(model, state, file_of, ignorable, report) -> None:
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{report.path}: the checkpoint lacks {len(missing)} tensor(s) this model needs, first "
                              f"{missing[0]!r}{' (a missing scale?)' if 'scale' in missing[0] else ''}; "
                              "it is incomplete or for a different model/config")
    for key in list(state):
        if key not in expected:
            if any(re.fullmatch(p, key) for p in ignorable):
                report.notes.append(f"ignored {key}")
                del state[key]
                continue
            raise CheckpointError(f"{file_of(key)}: tensor {key!r} has no place in this model; the checkpoint is "
                                  "for a different model variant (e.g. i2v vs t2v, or another size)")
        want, got = tuple(expected[key].shape), tuple(state[key].shape)
        if want != got:
            raise CheckpointError(f"{file_of(key)}: tensor {key!r} has shape {list(got)} but the model expects "
                                  f"{list(want)}; the checkpoint is for a different model size or config")
        if expected[key].dtype != state[key].dtype and not state[key].is_floating_point():
            raise CheckpointError(f"{file_of(key)}: tensor {key!r} is {state[key].dtype}, expected {expected[key].dtype}")
