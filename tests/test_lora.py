"""engine.lora over diffusers' own key normalisation: LoRA files in the original-Wan, musubi (kohya) and
diffusers layouts, written here with safetensors' own writer, merge into the tiny i2v transformer's
weights exactly as W + strength * alpha/rank * up @ down (names from the hand-written tests/wan_names.py)."""
import pytest
import torch
from safetensors.torch import save_file

from engine.errors import CheckpointError
from engine.lora import LoraSet
from tests.dit_helpers import tiny_model
from tests.wan_names import diffusers_to_wan_table

STRENGTH, USER_ALPHA = 0.7, 0.5


@pytest.fixture(scope="module")
def model_weights():
    m = tiny_model()
    table = diffusers_to_wan_table(num_layers=len(m.blocks), i2v=True)
    return {k: v.detach().clone() for k, v in m.state_dict().items()}, table


def _lora(weights, modules, with_alpha, seed=0):
    """{diffusers module: (down, up, alpha or None)} for every module named, random ranks 2..4."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, m in enumerate(modules):
        rows, cols = weights[m + ".weight"].shape
        r = 2 + i % 3
        alpha = float(torch.randint(1, 9, (), generator=g)) if with_alpha else None
        out[m] = (torch.randn(r, cols, generator=g), torch.randn(rows, r, generator=g), alpha)
    return out


def _expected(weights, lora, extra=None):
    want = {}
    for m, (down, up, alpha) in lora.items():
        scale = alpha / down.shape[0] if alpha is not None else USER_ALPHA
        want[m + ".weight"] = weights[m + ".weight"] + STRENGTH * scale * (up @ down)
    for k, delta in (extra or {}).items():
        want[k] = weights[k] + STRENGTH * USER_ALPHA * delta
    return want


def _check_merge(path, weights, table, want, naming):
    lora = LoraSet([path], [USER_ALPHA], [STRENGTH])
    keys = list(weights) if naming == "diffusers" else [table[k] for k in weights]
    lora.check_targets(keys)
    for k, w in weights.items():
        got = lora.apply(k if naming == "diffusers" else table[k], w)
        if k in want:
            torch.testing.assert_close(got, want[k], rtol=1e-5, atol=1e-5, msg=f"{path.name}: {k}")
        else:
            assert got is w, f"{path.name}: {k} changed but the LoRA does not touch it"
    lora.finish()


def _block_modules(n_blocks):
    names = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0", "attn2.add_k_proj", "attn2.add_v_proj", "ffn.net.0.proj", "ffn.net.2"]
    return [f"blocks.{i}.{n}" for i in range(n_blocks) for n in names]


def test_original_wan_layout_with_alpha_and_diffs(tmp_path, model_weights):
    weights, table = model_weights
    # diffusers maps image k/v only when a file has both (real i2v LoRAs do)
    lora = _lora(weights, ["blocks.0.attn1.to_q", "blocks.1.attn2.to_k", "blocks.0.attn2.add_k_proj",
                           "blocks.0.attn2.add_v_proj", "blocks.1.ffn.net.0.proj", "proj_out",
                           "condition_embedder.text_embedder.linear_1"], True)
    g = torch.Generator().manual_seed(9)
    diffs = {"blocks.0.norm2.bias": torch.randn(weights["blocks.0.norm2.bias"].shape, generator=g),
             "blocks.1.ffn.net.2.bias": torch.randn(weights["blocks.1.ffn.net.2.bias"].shape, generator=g)}
    file = {}
    for m, (down, up, alpha) in lora.items():
        wan = table[m + ".weight"][:-len(".weight")]
        file.update({f"diffusion_model.{wan}.lora_down.weight": down, f"diffusion_model.{wan}.lora_up.weight": up,
                     f"diffusion_model.{wan}.alpha": torch.tensor(alpha)})
    for k, d in diffs.items():  # full-weight differences of a norm and a bias: merged by us, not diffusers
        file[f"diffusion_model.{table[k][:-len('.bias')]}.diff_b"] = d
    save_file(file, tmp_path / "wan.safetensors")
    _check_merge(tmp_path / "wan.safetensors", weights, table, _expected(weights, lora, diffs), "wan")


def test_musubi_kohya_layout(tmp_path, model_weights):
    weights, table = model_weights
    n_blocks = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("blocks."))
    lora = _lora(weights, _block_modules(n_blocks), True, seed=1)  # musubi files carry every block's layers
    file = {}
    for m, (down, up, alpha) in lora.items():
        name = "lora_unet_" + table[m + ".weight"][:-len(".weight")].replace(".", "_")
        file.update({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up,
                     f"{name}.alpha": torch.tensor(alpha)})
    save_file(file, tmp_path / "kohya.safetensors")
    _check_merge(tmp_path / "kohya.safetensors", weights, table, _expected(weights, lora), "wan")


def test_diffusers_layout_without_alpha_uses_lora_alpha(tmp_path, model_weights):
    weights, table = model_weights
    lora = _lora(weights, ["blocks.0.attn1.to_v", "blocks.1.attn2.to_out.0", "proj_out",
                           "condition_embedder.time_proj"], False, seed=2)
    file = {}
    for m, (down, up, _) in lora.items():
        file.update({f"transformer.{m}.lora_A.weight": down, f"transformer.{m}.lora_B.weight": up})
    save_file(file, tmp_path / "diffusers.safetensors")
    for naming in ("diffusers", "wan"):  # the converter's source may be in either naming
        _check_merge(tmp_path / "diffusers.safetensors", weights, table, _expected(weights, lora), naming)


def test_layers_diffusers_cannot_map_are_refused_naming_the_file(tmp_path, model_weights):
    weights, _ = model_weights
    down, up = torch.randn(2, 36 * 8), torch.randn(weights["patch_embedding.weight"].shape[0], 2)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(2, 32),
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(32, 2),
               "diffusion_model.patch_embedding.lora_down.weight": down,
               "diffusion_model.patch_embedding.lora_up.weight": up}, tmp_path / "conv.safetensors")
    with pytest.raises(CheckpointError, match="conv.safetensors.*diffusers"):
        LoraSet([tmp_path / "conv.safetensors"])


def test_lora_for_another_model_writes_nothing(tmp_path, model_weights):
    weights, table = model_weights
    save_file({"transformer.blocks.0.attn1.to_q.lora_A.weight": torch.randn(2, 7),
               "transformer.blocks.0.attn1.to_q.lora_B.weight": torch.randn(5, 2)}, tmp_path / "x.safetensors")
    lora = LoraSet([tmp_path / "x.safetensors"])
    with pytest.raises(CheckpointError, match="different model"):
        lora.apply("blocks.0.attn1.to_q.weight", weights["blocks.0.attn1.to_q.weight"])
    save_file({"transformer.blocks.99.attn1.to_q.lora_A.weight": torch.randn(2, 7),
               "transformer.blocks.99.attn1.to_q.lora_B.weight": torch.randn(5, 2)}, tmp_path / "y.safetensors")
    with pytest.raises(CheckpointError, match="nothing was written"):
        LoraSet([tmp_path / "y.safetensors"]).check_targets([table[k] for k in weights])
