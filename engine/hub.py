"""Download exactly the files a model needs from the Hugging Face Hub, with progress and clear errors.

Everything goes through huggingface_hub, so its cache, resume after a dropped connection, HF_TOKEN and
HF_ENDPOINT work as users expect. HF_HUB_OFFLINE is read at call time (huggingface_hub reads it
once at import), so the app can go offline without a restart. Free disk is checked before the
first byte is fetched. Every network call has a deadline and every download a stall watchdog
(engine/hub_watch.py), so nothing waits forever and Stop is seen even while no byte arrives.

Files are fetched one at a time with `hf_hub_download` rather than with `snapshot_download`: our
own listing (with sizes) is needed anyway for the disk check and for naming a missing file, the
progress then has exact per-file boundaries, and the large files (most of the bytes) are already
fetched in parallel chunks by hf_xet.
"""
from __future__ import annotations

import os
import shutil
import socket
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .catalog import ENCODERS, ModelEntry, encoder_file
from .config import QuantConfig
from .errors import ConfigError, HubError
from .hub_errors import hub_error
from .hub_watch import Deadlines, FileBytes, watched

DISK_MARGIN = 512 * 2**20  # leave this much free after a download: a full disk breaks everything else
DEADLINES = Deadlines()
PROBE_TIMEOUT = 5.0


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
    stage: str = "download"  # listing (sizes not known yet) | download | done

    @property
    def fraction(self) -> float:
        if self.stage == "listing":
            return 0.0
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
                              "for them (engine.checkpoint.dit.load_dit); reinstall the engine or choose a model "
                              "without a distilled file.")
        # per-layer schemes (engine/layer_rules.py) quantize the bf16 file layer by layer instead
        dit_files = entry.dit_files(cfg.dit.scheme.format) if cfg.dit.quantized and not cfg.dit.rules else None
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
        fname = (encoder_file(comp, quant.scheme.format) if quant.quantized and comp in loadable and not quant.rules
                 else None)
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
          cache_dir: str | Path | None = None, token: str | bool | None = None,
          deadlines: Deadlines | None = None) -> dict[str, Path]:
    """Download (or find in the cache) every part of the plan. Returns role -> local path: the
    snapshot folder for `base`, the file for single-file parts (a list's first; see `paths`).
    `progress` is called from this thread, at least every `deadlines.tick_s`; it may raise to stop."""
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    if is_offline():
        return {p.role: _offline_path(p, cache_dir) for p in plan.parts}
    d = deadlines or DEADLINES
    _probe(endpoint)
    report = _Reporter(progress)
    listed = [(p, watched(lambda p=p: _list_files(p, endpoint, token, d), f"listing the files of {p.repo}", None,
                          lambda p=p: report(Progress(0, 0, f"the file list of {p.repo}", 0, 0, "listing")), d))
              for p in plan.parts]
    missing = [(p, name, size) for p, files in listed for name, size in files
               if not _cached(p.repo, name, cache_dir)]
    total = sum(size for _, _, size in missing)
    check_disk(cache_dir, total)
    done = 0
    for i, (part, name, size) in enumerate(missing):
        sink = FileBytes(size)

        def tick(name=name, i=i, sink=sink):
            report(Progress(done + sink.written, total, name, i, len(missing)))
        tick()
        watched(lambda: _download(part.repo, name, endpoint, cache_dir, token, sink.bar_class(), d),
                f"downloading {part.repo}/{name}", sink, tick, d, key=f"{cache_dir}|{part.repo}|{name}")
        done += size
    report(Progress(total, total, "", len(missing), len(missing), stage="done"))
    return {p.role: _local_path(p, files, cache_dir) for p, files in listed}


class _Reporter:
    """Calls the user's progress callback with byte counts that never go back (a resumed HTTP
    download can roll its bar back when the server ignores the Range header)."""

    def __init__(self, progress: ProgressFn | None):
        self.progress, self.high = progress, 0

    def __call__(self, p: Progress) -> None:
        self.high = max(self.high, p.done_bytes)
        if self.progress:
            p.done_bytes = self.high if p.stage != "listing" else 0
            self.progress(p)


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


def unreachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why the Hub cannot be reached in `timeout` seconds, or None when it can (or when a proxy
    decides: a direct connection then says nothing; downloads will say if the proxy cannot).
    The one reachability check for the app's start-up and for downloads."""
    from urllib.parse import urlparse

    url = urlparse(endpoint or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxies = urllib.request.getproxies()  # the *_proxy variables the HTTP client also reads
    if (proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(url.hostname or ""):
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as e:
        return str(e.strerror or e)
    return None


def _probe(endpoint: str | None) -> None:
    """Fail in seconds when the Hub cannot be reached at all, instead of after the client's retries."""
    why = unreachable(endpoint)
    if why is not None:
        raise HubError(f"cannot reach {endpoint or 'the Hugging Face Hub'} ({why}). Check the network "
                       "and retry, or set HF_HUB_OFFLINE=1 to use only files already in the cache, or run "
                       "`python app.py --demo` for the built-in model.")


def _default_cache() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _list_files(part: RepoFiles, endpoint, token, d: Deadlines) -> list[tuple[str, int]]:
    """(file, size) for the files of the part, from one `model_info` call: unlike `list_repo_tree`
    it takes a timeout (and the listing thread must end)."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(part.repo, revision="main", files_metadata=True,
                                                               timeout=d.request_s)
    except Exception as e:  # noqa: BLE001 - every failure becomes one HubError with a sentence
        raise hub_error(e, part.repo, endpoint=endpoint) from e
    sizes = {f.rfilename: f.size for f in info.siblings or []}
    chosen = list(filter_repo_objects(sizes, allow_patterns=part.patterns))
    exact = [p for p in part.patterns if not any(ch in p for ch in "*?[")]
    absent = [p for p in exact if p not in sizes and not p.endswith("config.json") and p != "model_index.json"]
    if absent:
        raise HubError(f"{part.repo} has no file {absent[0]}: the repo layout changed or the name is wrong. "
                       f"Check https://huggingface.co/{part.repo}/tree/main")
    if not chosen:
        raise HubError(f"{part.repo} has none of the files needed ({', '.join(part.patterns)})")
    unsized = [name for name in chosen if not isinstance(sizes[name], int)]
    if unsized:
        raise HubError(f"{endpoint or 'the Hub'} did not say the size of {part.repo}/{unsized[0]}, so free disk "
                       "cannot be checked: retry later, or use a huggingface_hub release that asks for it.")
    return [(name, sizes[name]) for name in chosen]


def _cached(repo: str, filename: str, cache_dir) -> bool:
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    return isinstance(hit, str) and os.path.isfile(hit)


def _download(repo, filename, endpoint, cache_dir, token, bar_class: type, d: Deadlines) -> str:
    """One file through the library (HTTP or Xet branch); runs on a watched worker thread."""
    from huggingface_hub import hf_hub_download

    from .hub_watch import Abandoned

    try:
        return hf_hub_download(repo, filename, endpoint=endpoint, cache_dir=cache_dir, token=token,
                               etag_timeout=d.request_s, tqdm_class=bar_class)
    except Abandoned:
        raise  # the caller has already stopped waiting
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
