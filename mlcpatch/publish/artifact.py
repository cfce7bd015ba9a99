"""Checking an artifact folder against its manifest.json before anything leaves the machine.

The contract and its one verifier live in ``mlcpatch.artifact``; publishing asks for its exact
form: a file the manifest does not list is refused too.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from typing import Any

from mlcpatch.artifact import MANIFEST, ArtifactError, Manifest, verify_artifact
from mlcpatch.publish.payload import Payload

_LOCAL_PATH = re.compile(r"^(?:/|~/|[A-Za-z]:[\\/]|\\\\)")  # /x, ~/x, C:\x, \\server


@dataclasses.dataclass(frozen=True)
class Artifact:
    folder: pathlib.Path
    manifest: Manifest  # as published: local paths cut (without_local_paths)
    files: list[Payload]  # every listed file, then manifest.json, in manifest order

    @property
    def name(self) -> str:
        return self.manifest.name or self.folder.resolve().name

    def wasm_files(self) -> list[Payload]:
        return [f for f in self.files if f.name.endswith(".wasm")]


def validate_artifact(folder: pathlib.Path) -> Artifact:
    """The folder's files as payloads, or ArtifactError naming what does not match the manifest:
    a listed file missing, of another size or sha256, or a file the manifest does not list."""
    try:
        manifest = verify_artifact(folder, exact=True)
    except ArtifactError as err:
        raise ArtifactError(f"{err}; refusing to publish") from None
    files = [
        Payload(name, entry.size, entry.sha256, path=folder / name)
        for name, entry in manifest.files.items()
    ]
    text = (folder / MANIFEST).read_text(encoding="utf-8")
    public = without_local_paths(manifest.to_json())
    if public != json.loads(text):  # else the file goes as it is, byte for byte
        text = json.dumps(public, indent=2) + "\n"
    files.append(Payload.from_bytes(MANIFEST, text.encode("utf-8")))
    return Artifact(folder=folder, manifest=Manifest.from_json(public, MANIFEST), files=files)


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
