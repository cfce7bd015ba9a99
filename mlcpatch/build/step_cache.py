"""Reusing finished build steps: outputs stored under the sha256 of everything that went in.

Entries live in ``$MLCPATCH_CACHE_DIR`` (default ``~/.cache/mlcpatch``) as
``<step>/<key>/``; an entry only counts once its ``.complete`` marker exists, so an interrupted
store is never mistaken for a result. The marker lists each file's size and sha256, checked on
every restore: a file overwritten or cut short in the cache is a miss (and the entry is dropped),
never a result hashed into a new manifest as if it were right.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

from mlcpatch.artifact import sha256_file
from mlcpatch.build.staging import staging_prefix, sweep_stale

_MARKER = ".complete"


def cache_root() -> pathlib.Path:
    env = os.environ.get("MLCPATCH_CACHE_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "mlcpatch"


def _place(src: pathlib.Path, dst: pathlib.Path) -> None:
    # Copies, never hard links: an artifact edited in place must not alter the cache entry.
    shutil.copyfile(src, dst)


def _digest(path: pathlib.Path) -> dict[str, int | str]:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _fsync(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class StepCache:
    def __init__(self, step: str, root: pathlib.Path | None = None, enabled: bool = True) -> None:
        self.dir = (root or cache_root()) / step
        self.enabled = enabled

    def _files(self, key: str) -> dict[str, dict] | None:
        """The entry's files as its marker lists them, when every one still matches."""
        if not self.enabled:
            return None
        entry = self.dir / key
        try:
            listed = json.loads((entry / _MARKER).read_text())
        except (OSError, ValueError):
            return None  # no marker (interrupted store), or one from before the sha256 list
        if not isinstance(listed, dict) or not listed:
            return None
        try:
            good = all(_digest(entry / name) == want for name, want in listed.items())
        except (OSError, TypeError):
            good = False
        if not good:
            shutil.rmtree(entry, ignore_errors=True)  # damaged: rebuild and store afresh
            return None
        return listed

    def entry(self, key: str) -> pathlib.Path | None:
        return self.dir / key if self._files(key) is not None else None

    def restore(self, key: str, dest: pathlib.Path) -> list[str] | None:
        """Copy a cached entry's files into ``dest``; their names, or None on a miss."""
        listed = self._files(key)
        if listed is None:
            return None
        names = sorted(listed)
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            _place(self.dir / key / name, dest / name)
        return names

    def restore_file(self, key: str, name: str, dest: pathlib.Path) -> bool:
        """Copy one file of a cached entry to ``dest``; False on a miss."""
        listed = self._files(key)
        if listed is None or name not in listed:
            return False
        _place(self.dir / key / name, dest)
        return True

    def store(self, key: str, files: dict[str, pathlib.Path]) -> None:
        """Save ``files`` (entry name -> path) as the entry for ``key``.

        A failure here (disk full, read-only cache) only costs the reuse, never the build.
        """
        if not self.enabled:
            return
        tmp: pathlib.Path | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            sweep_stale(self.dir, "[0-9a-f]{1,16}")
            tmp = pathlib.Path(tempfile.mkdtemp(prefix=staging_prefix(key[:16]), dir=self.dir))
            listed = {}
            for name, path in files.items():
                _place(path, tmp / name)
                _fsync(tmp / name)  # the data is on disk before the marker vouches for it
                listed[name] = _digest(tmp / name)
            (tmp / _MARKER).write_text(json.dumps(listed, sort_keys=True))
            _fsync(tmp / _MARKER)
            _fsync(tmp)
            final = self.dir / key
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(self.dir)
        except OSError:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
