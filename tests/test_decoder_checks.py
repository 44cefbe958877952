"""A bad decoder setting is reported before the pipeline loads and before any download, naming the
config key and the file: through engine.infer's command line and through the app's service."""
import json
import shutil
import subprocess
import sys

import pytest

from engine import infer, preset_files, presets as hardware
from engine.errors import CheckpointError, ConfigError
from engine.presets import GB, GpuInfo
from engine.request import VideoRequest
from engine.service import VideoService
from tests.conftest import ROOT
from vae_writer import light_tensors, tiny_tensors, write

RTX_4090 = GpuInfo("NVIDIA GeForce RTX 4090", (8, 9), 24 * GB, 23 * GB)
BASE = {"infer_steps": 2, "target_video_length": 9, "target_height": 32, "target_width": 32,
        "sample_guide_scale": 1.0, "sample_shift": 5.0, "fps": 8}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return infer.save_tiny(tmp_path_factory.mktemp("tiny") / "t2v")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("autoencoders")
    return {"tiny": write(d / "lighttaew2_1.safetensors", tiny_tensors(widths=(16, 8, 8, 8))),
            "tiny48": write(d / "lighttaew2_2.safetensors", tiny_tensors(latent_channels=48, patch=2)),
            "light": write(d / "lightvaew2_1.safetensors", light_tensors(base=4))}


@pytest.fixture
def no_load(monkeypatch):
    """The pipeline must not be built: the check comes first."""
    import engine.builder

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the decoder setting was checked")

    monkeypatch.setattr(engine.builder, "build_from_dir", refuse)


def run_infer(folder, tmp_path, capsys, **keys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({**BASE, **keys}))
    code = infer.main(["--model_path", str(folder), "--config_json", str(cfg), "--prompt", "waves", "--device", "cpu",
                       "--save_result_path", str(tmp_path / "o.mp4")])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("keys, words", [
    (dict(use_tae=True, tae_path="{missing}"), ["`tae_path`", "{missing}", "does not exist"]),
    (dict(use_tae=True, tiny_vae_path="{missing}"), ["`tiny_vae_path`", "{missing}"]),
    (dict(use_lightvae=True, vae_path="{missing}"), ["`vae_path`", "{missing}"]),
    (dict(use_tae=True, tae_path="{light}"), ["`tae_path`", "{light}", "'decoder.1.weight' is missing"]),
    (dict(use_lightvae=True, vae_path="{tiny}"), ["`vae_path`", "{tiny}", "'decoder.conv1.weight' is missing"]),
    (dict(use_tae=True, tae_path="{tiny48}"), ["`tae_path`", "{tiny48}", "48-channel", "16-channel"]),
    (dict(decoder="tiny"), ["needs its file", "`tae_path`", "does not download"]),
    (dict(vae_dtype="fp12"), ["vae_dtype", "fp12"]),
    (dict(decoder="medium"), ["decoder must be one of full, light, tiny", "medium"]),
    (dict(use_tae=True, use_lightvae=True), ["use_tae", "use_lightvae", "choose one"]),
    (dict(decoder="tiny", tae_chunk=-2), ["tae_chunk"]),
])
def test_infer_reports_a_bad_decoder_setting_before_loading(folder, files, tmp_path, capsys, no_load, keys, words):
    names = {**files, "missing": str(tmp_path / "nowhere" / "lighttaew2_1.safetensors")}
    keys = {k: v.format(**names) if isinstance(v, str) else v for k, v in keys.items()}
    code, err = run_infer(folder, tmp_path, capsys, **keys)
    assert code == 2, err
    for word in words:
        assert word.format(**names) in err, err


def test_infer_rejects_the_full_wan_vae_given_as_lightvae(folder, files, tmp_path, capsys, no_load, monkeypatch):
    """The full Wan2.1 VAE has 384 channels at decoder.conv1; the test file's 16 stand in for them here."""
    from engine.vae import check

    monkeypatch.setattr(check, "FULL_WAN_WIDTH", 16)
    code, err = run_infer(folder, tmp_path, capsys, use_lightvae=True, vae_path=files["light"])
    assert code == 2 and "`vae_path`" in err and "full-width Wan VAE" in err and "choose decoder full" in err


def test_good_decoder_files_pass_the_check_and_run(folder, files, tmp_path, capsys):
    code, err = run_infer(folder, tmp_path, capsys, use_tae=True, tae_path=files["tiny"])
    assert code == 0, err
    code, err = run_infer(folder, tmp_path, capsys, decoder="light", vae_path=files["light"], vae_dtype="bf16")
    assert code == 0, err


def test_command_line_names_a_missing_decoder_file(folder, tmp_path):
    cfg = tmp_path / "cfg.json"
    missing = tmp_path / "lighttaew2_1.safetensors"
    cfg.write_text(json.dumps({**BASE, "use_tae": True, "tae_path": str(missing)}))
    proc = subprocess.run([sys.executable, "-m", "engine.infer", "--model_path", str(folder), "--config_json", str(cfg),
                           "--prompt", "waves", "--device", "cpu", "--save_result_path", str(tmp_path / "o.mp4")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "`tae_path`" in proc.stderr and str(missing) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.mp4").exists()


@pytest.fixture
def presets(tmp_path, monkeypatch):
    """The preset folder with one more preset: a decoder setting can come from a preset file."""
    folder = tmp_path / "presets"
    shutil.copytree(hardware.PRESET_DIR, folder)
    monkeypatch.setattr(preset_files, "PRESET_DIR", folder)

    def add(name, **keys):
        (folder / f"{name}.json").write_text(json.dumps({**hardware.load_preset("vram24-fp8"), **keys}))
        return name
    return add


@pytest.mark.parametrize("keys, error, words", [
    (dict(use_tae=True, tae_path="/nowhere/lighttaew2_1.safetensors"), CheckpointError, "`tae_path`.*/nowhere"),
    (dict(decoder="light", vae_path="{tiny}"), CheckpointError, "`vae_path`.*decoder.conv1.weight"),
    (dict(vae_dtype="int4"), ConfigError, "vae_dtype.*int4"),
    (dict(use_tae=True, use_lightvae=True), ConfigError, "choose one"),
])
def test_service_reports_a_bad_decoder_setting_before_any_download(presets, files, tmp_path, keys, error, words):
    keys = {k: v.format(**files) if isinstance(v, str) else v for k, v in keys.items()}
    name = presets("bad-decoder", **keys)
    # a closed port: a download attempt would end in a Hub error, not the decoder's
    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path / "out", endpoint="http://127.0.0.1:9",
                           cache_dir=tmp_path / "cache")
    req = VideoRequest("a cat", height=480, width=832, num_frames=81, steps=4)
    with pytest.raises(error, match=words.format(**files)):
        service.check("wan2.1-t2v-14b", req, preset=name)
    with pytest.raises(error, match=words.format(**files)):
        service.run("wan2.1-t2v-14b", req, preset=name)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))


def test_service_accepts_a_hub_decoder_and_a_local_one(presets, files, tmp_path):
    service = VideoService(RTX_4090, demo=False, out_dir=tmp_path / "out")
    req = VideoRequest("a cat", height=480, width=832, num_frames=81, steps=4)
    service.check("wan2.1-t2v-14b", req, overrides={"decoder": "tiny"})  # no file: the Hub plan fetches it
    service.check("wan2.1-t2v-14b", req, preset=presets("local-tiny", use_tae=True, tae_path=files["tiny"]))


def test_a_path_the_chosen_decoder_does_not_use_is_said(caplog):
    from engine.vae.check import check_decoder_setting

    with caplog.at_level("WARNING", logger="engine.vae"):
        check_decoder_setting({"vae_path": "/models/Wan2.1_VAE.pth"}, from_hub=True)
    assert "`vae_path` (/models/Wan2.1_VAE.pth) is not used" in caplog.text and "vae/ folder" in caplog.text


def test_lightvae_for_a_48_channel_model_is_refused_before_the_hub_fetches_it():
    from engine.vae.check import check_decoder_setting

    with pytest.raises(ConfigError, match="16-channel.*48-channel.*tiny or full"):
        check_decoder_setting({"decoder": "light"}, from_hub=True, z_dim=48)
    assert check_decoder_setting({"decoder": "tiny"}, from_hub=True, z_dim=48).kind == "tiny"
