"""Checking an artifact folder against its manifest.json before anything leaves the machine.

The manifest is the one that ``mlcpatch.recipes.artifact.write_manifest`` writes:
``{"format": 1, ..., "files": {"<relative posix path>": {"size": int, "sha256": hex}}}``, listing
every file of the folder except manifest.json itself. Everything this module knows about that
format is in ``validate_artifact``, so a format change is one function to adapt.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from mlcpatch.publish.errors import ArtifactError
from mlcpatch.publish.hashing import sha256_file
from mlcpatch.publish.payload import Payload

MANIFEST = "manifest.json"
KNOWN_FORMATS = (1,)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHOWN_PROBLEMS = 3


@dataclasses.dataclass(frozen=True)
class Artifact:
    folder: pathlib.Path
    manifest: dict[str, Any]
    files: list[Payload]  # every listed file, then manifest.json, in manifest order

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.folder.resolve().name)

    def wasm_files(self) -> list[Payload]:
        return [f for f in self.files if f.name.endswith(".wasm")]


def _safe_relative(name: str) -> bool:
    # A manifest naming "../x" or "/etc/x" must not make us read (and publish) outside the folder.
    parts = name.split("/")
    return (
        bool(name)
        and "\\" not in name
        and not name.startswith("/")
        and all(p not in ("", ".", "..") for p in parts)
    )


def _load_manifest(folder: pathlib.Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {MANIFEST} (is this an artifact folder?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if manifest.get("format") not in KNOWN_FORMATS:
        raise ArtifactError(
            f"{path}: unknown manifest format {manifest.get('format')!r} "
            f"(this mlcpatch reads {', '.join(map(str, KNOWN_FORMATS))})"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError(f'{path}: no "files" table')
    return manifest


def _check_entry(folder: pathlib.Path, name: str, entry: Any) -> str | None:
    """The problem with one manifest entry, or None when the file matches it."""
    if not _safe_relative(name) or name == MANIFEST:
        return f"{name!r}: not a valid file name in an artifact"
    if not (
        isinstance(entry, dict)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("sha256"), str)
        and _SHA256.match(entry["sha256"])
    ):
        return f"{name}: manifest entry needs an integer size and a sha256"
    path = folder / name
    if path.is_symlink() or not path.is_file():
        return f"{name}: missing" if not path.exists() else f"{name}: not a regular file"
    size = path.stat().st_size
    if size != entry["size"]:
        return f"{name}: {size} bytes, manifest says {entry['size']}"
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        return f"{name}: sha256 {actual[:12]}…, manifest says {entry['sha256'][:12]}…"
    return None


def validate_artifact(folder: pathlib.Path) -> Artifact:
    """The folder's files as payloads, or ArtifactError naming what does not match the manifest:
    a listed file missing, of another size or sha256, or a file the manifest does not list."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder")
    manifest = _load_manifest(folder)
    listed: dict[str, Any] = manifest["files"]
    problems = [p for name, entry in listed.items() if (p := _check_entry(folder, name, entry))]
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if (path.is_file() or path.is_symlink()) and rel != MANIFEST and rel not in listed:
            problems.append(f"{rel}: not listed in {MANIFEST}")
    if problems:
        more = len(problems) - _SHOWN_PROBLEMS
        shown = "; ".join(problems[:_SHOWN_PROBLEMS]) + (f"; and {more} more" if more > 0 else "")
        raise ArtifactError(f"{folder} does not match its {MANIFEST}, refusing to publish: {shown}")
    files = [
        Payload(name, entry["size"], entry["sha256"], path=folder / name)
        for name, entry in listed.items()
    ]
    files.append(Payload.from_file(MANIFEST, folder / MANIFEST))
    return Artifact(folder=folder, manifest=manifest, files=files)
