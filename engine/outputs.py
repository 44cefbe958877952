"""The folder generated videos are written to and served from: private to this user, bounded in size."""
from __future__ import annotations

import os
import stat
import tempfile
import time
from pathlib import Path

from .errors import ConfigError

KEEP_VIDEOS = 32  # newest videos kept in the outputs folder; older ones are deleted
KEEP_SECONDS = 24 * 3600  # and none older than a day


def outputs_folder(path: str | Path | None) -> Path:
    """A folder only this user can reach: a fresh private temp folder by default; a given one must be a real
    folder (not a symlink) owned by this user, since its videos are served to visitors."""
    if path is None:
        return Path(tempfile.mkdtemp(prefix="quantwan-outputs-"))  # mode 0700, a new unguessable name
    folder = Path(path)
    if folder.is_symlink():
        raise ConfigError(f"the outputs folder {folder} is a symbolic link; give a real folder (its videos are "
                          "served, so a link could expose whatever it points to)")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.lstat()
    except OSError as e:
        raise ConfigError(f"cannot create the outputs folder {folder}: {e.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the outputs folder {folder} is not a folder")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ConfigError(f"the outputs folder {folder} belongs to another user (uid {info.st_uid}); give a "
                          "folder you own")
    return folder


def prune_outputs(folder: Path, keep: Path | None = None, max_files: int = KEEP_VIDEOS,
                  max_age_s: float = KEEP_SECONDS) -> list[Path]:
    """Delete our videos beyond the newest `max_files` or older than `max_age_s` (never `keep`)."""
    now = time.time()
    videos = sorted(folder.glob("video-*.mp4"), key=lambda p: p.stat().st_mtime, reverse=True)
    gone = [p for i, p in enumerate(videos)
            if p != keep and (i >= max_files or now - p.stat().st_mtime > max_age_s)]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone
