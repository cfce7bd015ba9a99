"""Temporary folders that carry their owner's process id, so a later run can sweep the ones a
killed build (SIGKILL, power loss) left behind without touching a build still running."""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import time

LEGACY_AGE_S = 24 * 3600  # folders named before the pid was in the name: swept after a day
_RANDOM = r"[a-z0-9_]{8}"  # what tempfile.mkdtemp appends


def staging_prefix(stem: str) -> str:
    """A mkdtemp prefix for a staging folder `stem` of this process: '.<stem>-<pid>-'."""
    return f".{stem}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sweep_stale(folder: pathlib.Path, stem_pattern: str) -> list[pathlib.Path]:
    """Remove folders in `folder` named by `staging_prefix` for a stem matching `stem_pattern`
    (a regular expression) whose process is gone; also such folders named the old way, without
    a pid, once a day old. Nothing else is touched. Returns what was removed."""
    with_pid = re.compile(rf"^\.(?:{stem_pattern})-(?P<pid>\d+)-{_RANDOM}$")
    legacy = re.compile(rf"^\.(?:{stem_pattern})-{_RANDOM}$")
    removed: list[pathlib.Path] = []
    try:
        children = list(folder.iterdir())
    except OSError:
        return removed
    for child in children:
        try:
            if not child.is_dir() or child.is_symlink():
                continue
            match = with_pid.match(child.name)
            if match:
                stale = not _alive(int(match.group("pid")))
            elif legacy.match(child.name):
                stale = time.time() - child.stat().st_mtime > LEGACY_AGE_S
            else:
                continue
        except OSError:
            continue
        if stale:
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed
