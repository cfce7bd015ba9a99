"""Reusing finished build steps: outputs stored under the sha256 of everything that went in.

Entries live in ``$MLCPATCH_CACHE_DIR`` (default ``~/.cache/mlcpatch``) as
``<step>/<key>/``; an entry only counts once its ``.complete`` marker exists, so an interrupted
store is never mistaken for a result.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

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


class StepCache:
    def __init__(self, step: str, root: pathlib.Path | None = None, enabled: bool = True) -> None:
        self.dir = (root or cache_root()) / step
        self.enabled = enabled

    def entry(self, key: str) -> pathlib.Path | None:
        if not self.enabled:
            return None
        path = self.dir / key
        return path if (path / _MARKER).is_file() else None

    def restore(self, key: str, dest: pathlib.Path) -> list[str] | None:
        """Copy a cached entry's files into ``dest``; their names, or None on a miss."""
        entry = self.entry(key)
        if entry is None:
            return None
        names = sorted(p.name for p in entry.iterdir() if p.is_file() and p.name != _MARKER)
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            _place(entry / name, dest / name)
        return names

    def restore_file(self, key: str, name: str, dest: pathlib.Path) -> bool:
        """Copy one file of a cached entry to ``dest``; False on a miss."""
        entry = self.entry(key)
        if entry is None or not (entry / name).is_file():
            return False
        _place(entry / name, dest)
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
            tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.dir))
            for name, path in files.items():
                _place(path, tmp / name)
            (tmp / _MARKER).write_text("")
            final = self.dir / key
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except OSError:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
