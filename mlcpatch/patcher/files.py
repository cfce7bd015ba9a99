"""Safe file handling: refuse odd targets, write atomically, keep a backup."""

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


def atomic_write(path: Path, data: bytes) -> None:
    """Write next to the target, then rename over it, so readers never see half a file."""
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_backup(path: Path, data: bytes) -> Path:
    """Save the content about to be replaced; never overwrite a different earlier backup."""
    candidate = path.with_name(path.name + BACKUP_SUFFIX)
    number = 0
    while candidate.exists():
        if candidate.read_bytes() == data:
            return candidate
        number += 1
        candidate = path.with_name(f"{path.name}{BACKUP_SUFFIX}.{number}")
    atomic_write(candidate, data)
    return candidate
