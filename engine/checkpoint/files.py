"""The file system side of checkpoints: regular files only, one sentence per OS error, atomic writes.

Every writer of the engine goes through atomic_write: a partial file never carries the final name, so
a kill -9 or a full disk cannot leave something that a loader later takes for a checkpoint.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

from ..errors import CheckpointError

PARTIAL = ".partial-"  # `.<name>.partial-<pid>`: a file being written (atomic_write)


def atomic_write(path: str | Path, write: Callable) -> None:
    """The one way this engine writes a file: `write(f)` fills `.<name>.partial-<pid>` in the same folder,
    which is fsynced and renamed over `path`; on any failure the partial file is removed. A kill -9 can
    leave a partial file (never a final-named one); remove_stale_partials clears those."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointError(os_error_sentence(e, path, "write")) from None
        raise


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Remove `.<name>.partial-<pid>` files (and folders) left in `folder` by runs that no longer exist."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for item in folder.glob(f".*{PARTIAL}*"):
        pid = item.name.rpartition(PARTIAL)[2]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another run is writing it now
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink(missing_ok=True)
        removed.append(item)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def os_error_sentence(e: OSError, path, doing: str = "read") -> str:
    """One sentence for an OSError, naming the real cause and what to do."""
    causes = {
        errno.ENOSPC: "the disk is full: free space or choose another output folder",
        errno.EDQUOT: "your disk quota is used up: free space or choose another output folder",
        errno.EROFS: "the file system is read-only: choose a writable folder",
        errno.EACCES: "permission denied: fix the permissions (chmod/chown) or use a folder you own",
        errno.EPERM: "the operation is not permitted: fix the permissions or use a folder you own",
        errno.ELOOP: "it is a symlink loop (a link that points back at itself): fix or remove the link",
        errno.ENOENT: "it (or a folder on its path) does not exist",
        errno.ENOTDIR: "a part of its path is a file, not a folder",
        errno.EISDIR: "it is a folder, not a file",
        errno.ENAMETOOLONG: "its name is too long for the file system",
        errno.EIO: "the disk reported an I/O error: check the disk",
    }
    return f"cannot {doing} {path}: {causes.get(e.errno, e.strerror or str(e))}"


def regular_file(path: str | Path, what: str = "file") -> os.stat_result:
    """stat() a path that must be a readable regular file, or raise a CheckpointError naming the real cause
    (missing, dangling symlink, symlink loop, permission, folder, FIFO/socket/device)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise CheckpointError(f"{what} {path} is a symlink to {os.readlink(path)}, which does not exist") from None
        raise CheckpointError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(os_error_sentence(e, f"{what} {path}")) from None
    if stat.S_ISDIR(st.st_mode):
        raise CheckpointError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a plain file")
        raise CheckpointError(f"{what} {path} is {kind}, not a regular file; point at the real file")
    return st


def open_regular(path: Path, what: str = "file"):
    """open(path, 'rb') that never blocks on a FIFO: checked before opening and again on the open file."""
    regular_file(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise CheckpointError(os_error_sentence(e, f"{what} {path}")) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between the check and the open
        os.close(fd)
        raise CheckpointError(f"{what} {path} is not a regular file; point at the real file")
    return os.fdopen(fd, "rb")
