"""Download exactly the files a model needs from the Hugging Face Hub, with progress and clear errors.

Everything goes through huggingface_hub, so its cache, resume of `.incomplete` files, HF_TOKEN and
HF_ENDPOINT work as users expect. HF_HUB_OFFLINE is read at call time (huggingface_hub reads it
once at import), so the app can go offline without a restart. Free disk is checked before the
first byte is fetched.
"""
from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .catalog import ENCODERS, ModelEntry, encoder_file
from .config import QuantConfig
from .errors import ConfigError, EngineError, HubError

DISK_MARGIN = 512 * 2**20  # leave this much free after a download: a full disk breaks everything else


@dataclass
class RepoFiles:
    role: str  # base | dit | t5 | clip
    repo: str
    patterns: list[str]  # fnmatch patterns (exact file names are patterns too)


@dataclass
class DownloadPlan:
    parts: list[RepoFiles] = field(default_factory=list)
    # Components whose LightX2V pre-quantized file is used (the rest quantize on load).
    prequantized: dict[str, list[str]] = field(default_factory=dict)
    # LightX2V distilled DiT file(s) to load, one per transformer: the pre-quantized ones above, or the
    # bf16 distilled ones, quantized on load. Empty for models without a distilled file.
    distilled_dit: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return "\n".join(f"{p.role}: {p.repo} [{', '.join(p.patterns)}]" for p in self.parts)


@dataclass
class Progress:
    done_bytes: int
    total_bytes: int
    filename: str
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


ProgressFn = Callable[[Progress], None]


def plan_downloads(entry: ModelEntry, cfg: QuantConfig, loadable: frozenset[str] = frozenset()) -> DownloadPlan:
    """Which files to fetch. `loadable`: components ("dit", "t5", "clip") whose LightX2V files this
    engine can load; for the others the bf16 weights come from the base repo and are quantized on load."""
    plan = DownloadPlan()
    base = ["model_index.json", "scheduler/*", "tokenizer/*", "vae/*", "image_processor/*"]
    dit_files = None
    if entry.distilled:
        # The base repo's transformer is not distilled: at 4 steps it gives noise, so it is never used.
        if "dit" not in loadable:
            raise ConfigError(f"{entry.label} runs LightX2V's distilled DiT files, but this build has no loader "
                              "for them (engine.checkpoint.load_dit); reinstall the engine or choose a model "
                              "without a distilled file.")
        dit_files = entry.dit_files(cfg.dit.scheme.format) if cfg.dit.quantized else None
        if dit_files:
            plan.prequantized["dit"] = list(dit_files)
        else:  # no published file in this format (or bf16): the bf16 distilled file, quantized on load
            dit_files = entry.distilled_bf16_files()
        plan.parts.append(RepoFiles("dit", entry.distill_repo, list(dit_files)))
        plan.distilled_dit = list(dit_files)
    for name in entry.transformers:
        base.append(f"{name}/config.json" if dit_files else f"{name}/*")
    encoders = [("t5", "text_encoder")] + ([("clip", "image_encoder")] if entry.uses_clip else [])
    for comp, folder in encoders:
        quant = getattr(cfg, comp)
        fname = encoder_file(comp, quant.scheme.format) if quant.quantized and comp in loadable else None
        if fname:
            plan.parts.append(RepoFiles(comp, ENCODERS, [fname]))
            plan.prequantized[comp] = [fname]
            base.append(f"{folder}/config.json")
        else:
            base.append(f"{folder}/*")
    plan.parts.insert(0, RepoFiles("base", entry.base_repo, base))
    from .vae.choice import plan_entry  # the light/tiny decoder file, when the config chooses one

    decoder = plan_entry(cfg)
    if decoder:
        plan.parts.append(RepoFiles("decoder", decoder[0], [decoder[1]]))
    return plan


def is_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return env in ("1", "true", "yes", "on") or (env == "" and bool(constants.HF_HUB_OFFLINE))


def fetch(plan: DownloadPlan, progress: ProgressFn | None = None, *, endpoint: str | None = None,
          cache_dir: str | Path | None = None, token: str | bool | None = None) -> dict[str, Path]:
    """Download (or find in the cache) every part of the plan. Returns role -> local path: the
    snapshot folder for `base`, the file for single-file parts (a list's first; see `paths`)."""
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if is_offline():
        return {p.role: _offline_path(p, cache_dir) for p in plan.parts}
    _probe(endpoint)
    listed = [(p, _list_files(p, endpoint, token)) for p in plan.parts]
    missing = [(p, name, size) for p, files in listed for name, size in files
               if not _cached(p.repo, name, cache_dir)]
    total = sum(size for _, _, size in missing)
    check_disk(cache_dir, total)
    done = 0
    for i, (part, name, size) in enumerate(missing):
        def report(n, name=name, i=i):
            if progress:
                progress(Progress(done + n, total, name, i, len(missing)))
        _download(part.repo, name, endpoint, cache_dir, token, report)
        done += size
    if progress:
        progress(Progress(total, total, "", len(missing), len(missing)))
    return {p.role: _local_path(p, files, cache_dir) for p, files in listed}


def check_disk(cache_dir: str | Path | None, need_bytes: int) -> None:
    folder = Path(cache_dir or _default_cache())
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need_bytes + DISK_MARGIN > free:
        raise HubError(f"not enough disk space: the download needs {need_bytes / 2**30:.1f} GB (plus "
                       f"{DISK_MARGIN / 2**30:.1f} GB headroom) but {folder} has {free / 2**30:.1f} GB free. "
                       "Free some space or point HF_HOME / HF_HUB_CACHE at a larger disk.")


def _probe(endpoint: str | None) -> None:
    """Fail in seconds when the Hub cannot be reached at all, instead of after the client's ~25 s of
    retries. Skipped behind a proxy, where a direct connection says nothing."""
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return
    url = urlparse(endpoint or "https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=5).close()
    except OSError as e:
        raise HubError(f"cannot reach {endpoint or 'the Hugging Face Hub'} ({e.strerror or e}). Check the network "
                       "and retry, or set HF_HUB_OFFLINE=1 to use only files already in the cache, or run "
                       "`python app.py --demo` for the built-in model.") from None


def _default_cache() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _list_files(part: RepoFiles, endpoint, token) -> list[tuple[str, int]]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    try:
        tree = [f for f in HfApi(endpoint=endpoint, token=token).list_repo_tree(part.repo, recursive=True)
                if isinstance(f, RepoFile)]
    except Exception as e:  # noqa: BLE001 - every failure becomes one HubError with a sentence
        raise hub_error(e, part.repo, endpoint=endpoint) from e
    sizes = {f.path: f.size for f in tree}
    chosen = list(filter_repo_objects(sizes, allow_patterns=part.patterns))
    exact = [p for p in part.patterns if not any(ch in p for ch in "*?[")]
    absent = [p for p in exact if p not in sizes and not p.endswith("config.json") and p != "model_index.json"]
    if absent:
        raise HubError(f"{part.repo} has no file {absent[0]}: the repo layout changed or the name is wrong. "
                       f"Check https://huggingface.co/{part.repo}/tree/main")
    if not chosen:
        raise HubError(f"{part.repo} has none of the files needed ({', '.join(part.patterns)})")
    return [(name, sizes[name]) for name in chosen]


def _cached(repo: str, filename: str, cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return isinstance(hit, str) and os.path.isfile(hit)


def _download(repo, filename, endpoint, cache_dir, token, report) -> str:
    from huggingface_hub import hf_hub_download

    class Bar:  # the minimal tqdm interface huggingface_hub calls; forwards bytes to our callback
        def __init__(self, total=None, initial=0, **_):
            self.n = initial
            report(self.n)

        def update(self, n=1):
            self.n += n
            report(self.n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

    try:
        return hf_hub_download(repo, filename, endpoint=endpoint, cache_dir=cache_dir, token=token, tqdm_class=Bar)
    except EngineError:
        raise  # e.g. the user's Stop, raised from the progress callback
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, repo, filename, endpoint) from e


def _local_path(part: RepoFiles, files: list[tuple[str, int]], cache_dir) -> Path:
    from huggingface_hub import try_to_load_from_cache

    first = files[0][0]
    path = Path(try_to_load_from_cache(part.repo, first, cache_dir=cache_dir))
    if part.role == "base":
        return path.parents[len(Path(first).parts) - 1]  # the snapshot folder
    return path


def _offline_path(part: RepoFiles, cache_dir) -> Path:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(part.repo, allow_patterns=part.patterns, cache_dir=cache_dir,
                                        local_files_only=True))
    except Exception as e:  # noqa: BLE001
        raise HubError(f"offline (HF_HUB_OFFLINE is set) and {part.repo} [{', '.join(part.patterns)}] is not "
                       "complete in the local cache. Unset HF_HUB_OFFLINE to download it, or copy the cache "
                       "from a machine that has it.") from e
    if part.role == "base":
        return folder
    path = folder / part.patterns[0]
    if not path.is_file():
        raise HubError(f"offline (HF_HUB_OFFLINE is set) and {part.repo}/{part.patterns[0]} is not in the cache.")
    return path


def hub_error(e: Exception, repo: str, filename: str | None = None, endpoint: str | None = None) -> HubError:
    """One sentence for each way a download fails, saying what to do."""
    from huggingface_hub import errors as hf

    what = f"{repo}/{filename}" if filename else repo
    host = endpoint or "the Hugging Face Hub"
    if isinstance(e, hf.GatedRepoError):
        return HubError(f"{repo} is gated: accept its terms at https://huggingface.co/{repo} with your account, then "
                        "log in (`hf auth login`) or set HF_TOKEN, and retry.")
    if isinstance(e, hf.RepositoryNotFoundError):
        return HubError(f"repository {repo} was not found on {host} (or it is private and no valid token was "
                        "given). Check the name, or set HF_TOKEN for a private repo.")
    if isinstance(e, hf.RevisionNotFoundError):
        return HubError(f"{repo}: the requested revision does not exist.")
    if isinstance(e, (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError)):
        return HubError(f"{what} is not in the local cache and {host} cannot be reached (offline or no network). "
                        "Connect and retry, or run `python app.py --demo` to use the built-in model.")
    if isinstance(e, (hf.RemoteEntryNotFoundError, hf.EntryNotFoundError)):
        return HubError(f"{what} does not exist on {host}: the repo layout changed or the file name is wrong.")
    if isinstance(e, hf.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            return HubError(f"{what}: 401 unauthorized. Set HF_TOKEN (or `hf auth login`) with access to {repo}.")
        if status == 403:
            return HubError(f"{what}: 403 forbidden. Your token has no access to {repo}.")
        return HubError(f"{what}: {host} answered HTTP {status}. The server may be busy: retry later; "
                        "finished files and partial downloads are kept and resume.")
    if isinstance(e, _network_errors()):
        return HubError(f"cannot reach {host} for {what} ({type(e).__name__}). Check the network and retry: "
                        "partial downloads resume where they stopped.")
    if isinstance(e, OSError):
        return HubError(f"writing {what} failed: {e}. Check free disk space and permissions of the cache folder.")
    return HubError(f"downloading {what} failed: {type(e).__name__}: {e}")


def _network_errors() -> tuple[type, ...]:
    """Connection failures of whichever HTTP client this huggingface_hub uses (httpx2 or httpx)."""
    kinds: list[type] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            lib = __import__(module)
        except ImportError:
            continue
        kinds += [lib.ConnectError, lib.TimeoutException, lib.RemoteProtocolError, lib.NetworkError]
    return tuple(kinds)
