"""An artifact folder's manifest.json: the one definition of a valid one, for loading and
publishing alike.

``{"format": 1, ..., "files": {"<relative posix path>": {"size": int, "sha256": hex}}}`` lists
every file of the folder except manifest.json itself. Hashes catch corruption (a cut download, a
disk error), not tampering: whoever can write the folder can rewrite the manifest too, and an
artifact's library is native code that runs with the user's rights.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
from typing import Any

MANIFEST = "manifest.json"
KNOWN_FORMATS = (1,)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """The manifest, or a file name an artifact gives, cannot be trusted; the message says why."""


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * 1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relative(name: object) -> bool:
    """A plain relative posix path with no '..', '.', empty or absolute part: naming "../x" or
    "/etc/x" in a manifest or config must not make anything read outside the folder."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in name.split("/"))


def inside(folder: pathlib.Path, name: object, what: str) -> pathlib.Path:
    """`folder / name`, refused unless `name` is safe and, symlinks resolved, stays inside."""
    if not safe_relative(name):
        raise ManifestError(f"{folder}: {what} {name!r} is not a relative path inside the folder")
    path = folder / str(name)
    root = folder.resolve()
    if path.exists() and not path.resolve().is_relative_to(root):
        raise ManifestError(f"{folder}: {what} {name!r} leads outside the folder (a symlink)")
    return path


def read_manifest(folder: pathlib.Path) -> dict[str, Any]:
    """manifest.json as a dict with a non-empty `files` table of well-formed entries."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder}: no {MANIFEST} (is this an artifact folder?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object")
    if manifest.get("format") not in KNOWN_FORMATS:
        raise ManifestError(
            f"{path}: unknown manifest format {manifest.get('format')!r} "
            f"(this mlcpatch reads {', '.join(map(str, KNOWN_FORMATS))})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ManifestError(f'{path}: no "files" table (a non-empty object of name -> entry)')
    for name, entry in files.items():
        if not safe_relative(name) or name == MANIFEST:
            raise ManifestError(f"{path}: {name!r} is not a valid file name in an artifact")
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("size"), int)
            and not isinstance(entry.get("size"), bool)
            and entry["size"] >= 0
            and isinstance(entry.get("sha256"), str)
            and _SHA256.match(entry["sha256"])
        ):
            raise ManifestError(f"{path}: entry {name!r} needs an integer size and a sha256")
    return manifest


def entry_problem(folder: pathlib.Path, name: str, entry: dict[str, Any]) -> str | None:
    """What is wrong with one listed file (missing, not a plain file, size, sha256), or None."""
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return f"{name}: missing" if not path.exists() else f"{name}: not a regular file"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{name}: {size} bytes, manifest says {entry['size']}"
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        return f"{name}: sha256 mismatch ({actual[:12]}…, manifest says {entry['sha256'][:12]}…)"
    return None


def require_listed(folder: pathlib.Path, manifest: dict[str, Any], names: list[str]) -> None:
    """Files the loader will open must be listed, so a hash covers each of them."""
    missing = [n for n in names if n not in manifest["files"]]
    if missing:
        raise ManifestError(
            f"{folder / MANIFEST} does not list {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            + ": the artifact is incomplete or was not built by mlcpatch"
        )
