"""README.md's front matter is a Space config the Hub accepts: read with huggingface_hub's own card
classes, checked against the Spaces configuration reference (keys, types, lengths, allowed values),
and its `preload_from_hub` names exactly files that the app's default model on ZeroGPU downloads."""
import fnmatch
import re
import unicodedata
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The Spaces configuration reference (https://huggingface.co/docs/hub/spaces-config-reference).
KEYS = {"title": str, "emoji": str, "colorFrom": str, "colorTo": str, "sdk": str, "python_version": str,
        "sdk_version": str, "suggested_hardware": str, "suggested_storage": str, "app_file": str, "app_port": int,
        "base_path": str, "fullWidth": bool, "header": str, "short_description": str, "models": list,
        "datasets": list, "tags": list, "thumbnail": str, "pinned": bool, "hf_oauth": bool,
        "hf_oauth_scopes": list, "hf_oauth_expiration_minutes": int, "disable_embedding": bool,
        "startup_duration_timeout": str, "custom_headers": dict, "preload_from_hub": list, "license": str}
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SDKS = {"gradio", "docker", "static"}


@pytest.fixture(scope="module")
def card():
    from huggingface_hub import SpaceCard, metadata_load

    card = SpaceCard.load(README)
    data = card.data.to_dict()
    assert data == metadata_load(README)  # the two ways the library reads it agree
    return data


def test_keys_and_types(card):
    unknown = set(card) - set(KEYS)
    assert not unknown, f"not Space config keys: {unknown}"
    for key, value in card.items():
        assert isinstance(value, KEYS[key]), f"{key} should be {KEYS[key].__name__}, is {value!r}"


def test_values(card):
    from huggingface_hub import SpaceHardware

    assert 0 < len(card["short_description"]) <= 60, len(card["short_description"])
    assert card["sdk"] in SDKS
    assert card["colorFrom"] in COLORS and card["colorTo"] in COLORS
    assert (ROOT / card["app_file"]).is_file()
    assert card["suggested_hardware"] in {h.value for h in SpaceHardware}
    emoji = card["emoji"].replace("\ufe0f", "")  # the emoji-style variation selector is part of one emoji
    assert len(emoji) == 1 and unicodedata.category(emoji) == "So", card["emoji"]
    assert re.fullmatch(r"3\.\d+(\.\d+)?", card["python_version"])


def test_versions_agree_with_the_requirements(card):
    """The Space installs Gradio `sdk_version` and Python `python_version`: both must satisfy what
    requirements.txt and the installed libraries themselves ask for."""
    sdk = Version(card["sdk_version"])
    reqs = [Requirement(line.split("#")[0]) for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.split("#")[0].strip() and not line.startswith("-")]
    gradio = next(r for r in reqs if r.name == "gradio")
    assert sdk in gradio.specifier
    assert sdk.major == Version(metadata.version("gradio")).major  # the tests run the same Gradio generation
    python = Version(card["python_version"])
    for lib in ("gradio", "diffusers", "transformers", "huggingface_hub", "torch"):
        needs = metadata.metadata(lib)["Requires-Python"]
        if needs:
            assert python in SpecifierSet(needs), f"{lib} {metadata.version(lib)} needs Python {needs}"


def test_preload_from_hub_is_exactly_what_the_default_model_downloads(card, monkeypatch, tmp_path):
    from engine import hub
    from engine.builder import loadable_components
    from engine.gpu import zerogpu_gpu
    from engine.service import VideoService

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    svc = VideoService(zerogpu_gpu(), demo=False, out_dir=tmp_path)
    model = svc.default_model()
    _, cfg = svc.config(model)
    plan = hub.plan_downloads(svc._entry(model), cfg, loadable_components())
    parts = {p.repo: p.patterns for p in plan.parts}
    preload = {}
    for item in card["preload_from_hub"]:
        fields = item.split()
        assert 1 <= len(fields) <= 3, item  # "repo", "repo file1,file2" or "repo file1,file2 commit"
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", fields[0]), item
        if len(fields) == 3:
            assert re.fullmatch(r"[0-9a-f]{40}", fields[2]), item
        assert len(fields) >= 2, f"{item}: preload only the files the app needs, not the whole repo"
        files = fields[1].split(",")
        assert all(f and not any(ch in f for ch in "*?[ ") for f in files), item  # exact names
        preload[fields[0]] = files
    assert set(preload) == set(parts), "one entry per repo the default model downloads"
    for repo, files in preload.items():
        patterns = parts[repo]
        for name in files:
            assert any(fnmatch.fnmatch(name, p) for p in patterns), f"{repo}/{name} is not in the plan"
        exact = [p for p in patterns if not any(ch in p for ch in "*?[")]
        assert set(exact) <= set(files), f"{repo}: {set(exact) - set(files)} not preloaded"
        for folder in ("transformer", "vae"):
            if f"{folder}/*" in patterns:  # the weights themselves: one file, or an index and every shard
                assert weights_listed(folder, files), f"{repo}/{folder}: weights not preloaded"


def weights_listed(folder: str, files: list[str]) -> bool:
    """diffusers names a folder's weights `diffusion_pytorch_model.safetensors`, or shards
    `diffusion_pytorch_model-0000K-of-0000N.safetensors` with `diffusion_pytorch_model.safetensors.index.json`."""
    if f"{folder}/diffusion_pytorch_model.safetensors" in files:
        return True
    shards = [m for f in files if (m := re.fullmatch(rf"{folder}/diffusion_pytorch_model-(\d{{5}})-of-(\d{{5}})"
                                                     r"\.safetensors", f))]
    if not shards or f"{folder}/diffusion_pytorch_model.safetensors.index.json" not in files:
        return False
    total = {int(m.group(2)) for m in shards}
    return len(total) == 1 and sorted(int(m.group(1)) for m in shards) == list(range(1, total.pop() + 1))
