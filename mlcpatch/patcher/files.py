"""Safe file handling: refuse odd targets, write atomically, keep a backup.

Writes go to a temporary file in the same folder that is then renamed over the target (and the
folder fsynced), so a crash leaves either the old or the new file. The new file takes the old
one's permission bits and, when running as root, its owner and group. Being a new file, it
leaves hard links behind: other names of the old file keep the old content (patching reports
this), which is what one wants for files hard-linked from a package cache.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from mlcpatch.patcher.errors import PatchError

BACKUP_SUFFIX = ".mlcpatch-bak"


def check_target(path: Path, *, write: bool) -> Path:
    """Return the path if it is a regular, readable (and, for writes, writable) .py file."""
    if path.is_symlink():
        raise PatchError(
            f"{path}: is a symlink (to {os.readlink(path)}); patch the file it points to instead"
        )
    if not path.exists():
        raise PatchError(f"{path}: no such file")
    if not path.is_file():
        raise PatchError(f"{path}: not a regular file")
    if path.suffix != ".py":
        raise PatchError(f"{path}: not a Python source file (expected a .py file)")
    if not os.access(path, os.R_OK):
        raise PatchError(f"{path}: not readable")
    if write:
        mode = path.stat().st_mode
        # Root may write anything; still honour a file someone marked read-only.
        if not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise PatchError(f"{path}: file is read-only; nothing changed")
        if not os.access(path.parent, os.W_OK):
            raise PatchError(f"{path.parent}: folder is not writable (needed for an atomic write)")
    return path


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX only; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _take_owner(fd: int, like: os.stat_result) -> None:
    """Give the new file the original's owner and group: root can; others may at least set a
    group they belong to; what cannot be kept is reported by atomic_write."""
    now = os.fstat(fd)
    if (now.st_uid, now.st_gid) == (like.st_uid, like.st_gid) or not hasattr(os, "fchown"):
        return
    for uid in (like.st_uid, -1):
        try:
            os.fchown(fd, uid, like.st_gid)
            return
        except PermissionError:
            continue
        except OSError:  # pragma: no cover - file systems without owners
            return


def atomic_write(path: Path, data: bytes, *, like: Path | None = None) -> list[str]:
    """Write next to the target, then rename over it, so readers never see half a file.

    The new file gets the permission bits and (where allowed: as root) the owner and group of
    `like`, by default of `path` itself. Being a new file, it is no longer a hard link of
    anything the old one was linked with. Returns notes about what could not be kept."""
    source = like if like is not None else path
    old = source.stat() if source.exists() else None
    mode = stat.S_IMODE(old.st_mode) if old is not None else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if old is not None:
                _take_owner(handle.fileno(), old)
            os.fchmod(handle.fileno(), mode)  # after chown, which may clear set-id bits
            os.fsync(handle.fileno())
        new = os.stat(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    notes: list[str] = []
    if old is not None and (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
        notes.append(
            f"{path}: now owned by uid {new.st_uid}, gid {new.st_gid} (was uid {old.st_uid}, "
            f"gid {old.st_gid}); only root can keep another user's ownership"
        )
    if like is None and old is not None and old.st_nlink > 1:
        others = old.st_nlink - 1
        notes.append(
            f"{path} had {others} other hard link{'s' if others > 1 else ''}; it is now a "
            "separate file and the other links keep the previous content"
        )
    return notes


def write_backup(path: Path, data: bytes) -> Path:
    """Save the content about to be replaced, with the file's permission bits (and, as root, its
    owner); never overwrite a different earlier backup."""
    candidate = path.with_name(path.name + BACKUP_SUFFIX)
    number = 0
    while candidate.exists():
        if candidate.read_bytes() == data:
            return candidate
        number += 1
        candidate = path.with_name(f"{path.name}{BACKUP_SUFFIX}.{number}")
    atomic_write(candidate, data, like=path)
    return candidate
