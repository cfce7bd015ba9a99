"""Checking an artifact folder against its manifest.json before anything leaves the machine.

The manifest is the one that ``mlcpatch.build.artifact.write_manifest`` writes; what a valid
one is lives in ``mlcpatch.manifest`` (shared with loading). Publishing is stricter than loading
in one way: a file the manifest does not list is refused too.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from mlcpatch.manifest import MANIFEST, ManifestError, entry_problem, read_manifest
from mlcpatch.publish.errors import ArtifactError
from mlcpatch.publish.payload import Payload

_SHOWN_PROBLEMS = 3
_LOCAL_PATH = re.compile(r"^(?:/|~/|[A-Za-z]:[\\/]|\\\\)")  # /x, ~/x, C:\x, \\server


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


def _load_manifest(folder: pathlib.Path) -> dict[str, Any]:
    try:
        return read_manifest(folder)
    except ManifestError as err:
        raise ArtifactError(str(err)) from None


def validate_artifact(folder: pathlib.Path) -> Artifact:
    """The folder's files as payloads, or ArtifactError naming what does not match the manifest:
    a listed file missing, of another size or sha256, or a file the manifest does not list."""
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a folder")
    manifest = _load_manifest(folder)
    listed: dict[str, Any] = manifest["files"]
    problems = [p for name, entry in listed.items() if (p := entry_problem(folder, name, entry))]
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
    public = without_local_paths(manifest)
    text = (folder / MANIFEST).read_text(encoding="utf-8")
    if public != manifest:  # else the file goes as it is, byte for byte
        text = json.dumps(public, indent=2) + "\n"
    files.append(Payload.from_bytes(MANIFEST, text.encode("utf-8")))
    return Artifact(folder=folder, manifest=public, files=files)


def without_local_paths(value: Any) -> Any:
    """`value` with every absolute path (the build's source file, staging folders) cut to its
    last part: where files lay on the builder's machine is nobody else's business. The listed
    files' names are relative, so what a reader verifies is unchanged."""
    if isinstance(value, dict):
        return {k: without_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_local_paths(v) for v in value]
    if isinstance(value, str) and _LOCAL_PATH.match(value):
        return value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return value
