"""Loading is exact: every buffer the loader builds equals what the independent writer wrote, bit for bit.

The writer (tests/lightx2v_writer.py) and the key table (tests/wan_names.py) share no code with the
engine. Weights are built so that every row of every scale matrix differs from every other row: a
loader that swaps, shifts or mis-unswizzles scale rows, maps a layer to the wrong module or drops a
bias fails here on the first layer it touches, instead of hiding in a model-level error budget.
"""
import pytest
import torch

from engine.checkpoint.dit import load_dit
from engine.checkpoint.io import write_safetensors
from engine.formats import Quantized, get_format
from engine.linear import QuantLinear
from tests.dit_helpers import tiny_model
from tests.lightx2v_writer import PLAIN_WRITERS, quantize_state_dict, wan_dit_selected
from tests.reference import reference_dequant
from tests.wan_names import diffusers_to_wan_table

FORMATS = ["int8", "fp8", "fp8_block128", "mxfp8", "nvfp4"]


def distinct_rows(w: torch.Tensor, layer: int) -> torch.Tensor:
    """w with the amax of every (row, 16-column block) set to a power of two that depends on the row
    and the block: rows r and r' get different exponent patterns (r % 16 on the first 32 columns,
    r // 16 on the next), so every MX (32) and NV (16) scale row is unique in its layer; a row factor
    in [1, 1.5) (too small to move a power-of-two scale) makes every per-row int8/fp8 scale unique too."""
    n, k = w.shape
    g = torch.Generator().manual_seed(layer)
    base = (torch.rand(n, k, generator=g) * 1.8 - 0.9)  # |x| < 0.9: the pinned element is the block max
    base[:, ::16] = torch.where(torch.rand(n, k // 16, generator=g) < 0.5, -1.0, 1.0)
    r = torch.arange(n)[:, None]
    b = torch.arange(k // 32)[None, :]
    exp = torch.where(b == 0, r % 16, torch.where(b == 1, r // 16 + 3 * layer % 5, (r + b + layer) % 16))
    amp = torch.exp2(exp.float() - 8).repeat_interleave(32, 1) * (1 + 0.5 * r / n)
    return (base * amp).to(w.dtype)


@pytest.fixture(scope="module")
def model():
    m = tiny_model()
    with torch.no_grad():
        for i, (name, mod) in enumerate(m.named_modules()):
            if isinstance(mod, torch.nn.Linear) and name.startswith("blocks."):
                mod.weight.copy_(distinct_rows(mod.weight, i))
    return m


def quantized_layers(model):
    """(diffusers module name, Wan name) of every layer LightX2V quantizes, from the hand-written table."""
    table = diffusers_to_wan_table(num_layers=len(model.blocks))
    return [(d[:-len(".weight")], w[:-len(".weight")]) for d, w in table.items()
            if d.endswith(".weight") and wan_dit_selected(w) and model.state_dict()[d].dim() == 2]


@pytest.mark.parametrize("fmt", FORMATS)
def test_loaded_buffers_equal_the_written_codes_and_scales(tmp_path, model, fmt):
    table = diffusers_to_wan_table(num_layers=len(model.blocks))
    sd = {table[k]: v.detach().clone() for k, v in model.state_dict().items()}
    path = tmp_path / f"{fmt}.safetensors"
    write_safetensors(path, quantize_state_dict(sd, fmt, wan_dit_selected))
    loaded, report = load_dit(path, model.config, dtype=torch.float32)
    layers = quantized_layers(model)
    assert len(layers) == 24 and report.formats == {fmt: 24}
    modules = dict(loaded.named_modules())
    for diff, wan in layers:
        w = model.get_submodule(diff).weight.detach().float()
        want = PLAIN_WRITERS[fmt](w)
        if fmt != "fp8_block128":  # one 128x128 block in these small layers: a single scale
            rows = want["weight_scale"].view(torch.uint8) if want["weight_scale"].element_size() == 1 \
                else want["weight_scale"]
            assert len({bytes(r.contiguous().view(torch.uint8).numpy()) for r in rows}) == rows.shape[0], diff
        got = modules[diff]
        assert isinstance(got, QuantLinear) and got.fmt == fmt, diff
        for name, t in want.items():
            mine = getattr(got, name)
            assert mine.shape == t.shape, (diff, name, mine.shape, t.shape)
            assert torch.equal(_bits(mine), _bits(t)), f"{diff}.{name} differs from {wan}.{name}"
        assert torch.equal(got.bias.float(), sd[wan + ".bias"].to(torch.bfloat16).float()), f"{diff}.bias"
    # everything else: the written (bf16) values, under the right diffusers name
    state = loaded.state_dict()
    for d, w in table.items():
        if not any(d.startswith(q + ".") for q, _ in layers):
            assert torch.equal(state[d].float(), sd[w].to(torch.bfloat16).float()), d


def _bits(t):
    t = t.contiguous()
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int32) if t.element_size() == 4 else t


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_loaded_layer_dequantizes_to_the_reference(tmp_path, fmt):
    """Per layer, after loading a checkpoint of the plain tiny model: the layer's weight, dequantized,
    equals the float64 reference model of the format (tests/reference.py) applied to the float weight
    that has that diffusers name. Bounds: float32 arithmetic only (measured <= 3e-7 relative)."""
    m = tiny_model()
    table = diffusers_to_wan_table(num_layers=len(m.blocks))
    sd = {table[k]: v.detach().clone() for k, v in m.state_dict().items()}
    path = tmp_path / f"{fmt}.safetensors"
    write_safetensors(path, quantize_state_dict(sd, fmt, wan_dit_selected))
    loaded, _ = load_dit(path, m.config, dtype=torch.float32)
    f = get_format(fmt)
    for diff, _wan in quantized_layers(m):
        q = loaded.get_submodule(diff)
        got = f.dequantize_weight(Quantized(q.weight, q.weight_scale, getattr(q, "weight_global_scale", None),
                                            cols=q.in_features)).double()
        want = reference_dequant(fmt, m.get_submodule(diff).weight.detach(), "weight")
        err = float((got - want).norm() / want.norm())
        assert err < 1e-6, f"{diff}: {err}"


@pytest.mark.parametrize("form", ["input_global_scale", "alpha", "input_absmax", "calib.pt"])
def test_nvfp4_static_activation_scale_in_every_form(tmp_path, form):
    """LightX2V gives NVFP4's calibrated activation scale as input_global_scale, as alpha =
    1/(input_gs * weight_gs), as an input absmax, or in calib.pt beside the file: every form must
    give each layer its own input_gs = 6*448/absmax (absmax differs per layer)."""
    m = tiny_model()
    table = diffusers_to_wan_table(num_layers=len(m.blocks))
    sd = quantize_state_dict({table[k]: v.detach().clone() for k, v in m.state_dict().items()}, "nvfp4",
                             wan_dit_selected)
    absmax = {wan: 1.0 + i / 4 for i, (_, wan) in enumerate(quantized_layers(m))}
    for wan, a in absmax.items():
        igs = torch.tensor([6 * 448 / a])
        if form == "input_global_scale":
            sd[f"{wan}.input_global_scale"] = igs
        elif form == "alpha":
            sd[f"{wan}.alpha"] = 1.0 / (igs * sd[f"{wan}.weight_global_scale"])
        elif form == "input_absmax":
            sd[f"{wan}.input_absmax"] = torch.tensor(a)
    if form == "calib.pt":
        torch.save({"absmax": {f"{wan}.weight": torch.tensor(a) for wan, a in absmax.items()}}, tmp_path / "calib.pt")
    write_safetensors(tmp_path / "nvfp4.safetensors", sd)
    loaded, _ = load_dit(tmp_path / "nvfp4.safetensors", m.config)
    for diff, wan in quantized_layers(m):
        got = float(loaded.get_submodule(diff).input_global_scale)
        assert got == pytest.approx(6 * 448 / absmax[wan], rel=1e-6), diff
