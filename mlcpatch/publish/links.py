"""Link files given with --links: checked to be what their name says before they are published.

Reading and checking are mlcpatch.links' own; this module only turns their errors into
publishing's and the files into payloads.
"""

from __future__ import annotations

import pathlib

from mlcpatch.links.binary import read_safetensors_header
from mlcpatch.links.linkfile import LinkFileError, read_json_file
from mlcpatch.publish.errors import ArtifactError
from mlcpatch.publish.payload import Payload


def _check_safetensors(path: pathlib.Path) -> None:
    # The link reader's own header check (capped length, JSON object, offsets inside the file):
    # cheap, and catches a truncated or mis-named file without loading any tensor.
    try:
        read_safetensors_header(path)
    except LinkFileError as err:
        raise ArtifactError(
            f"not a safetensors file, or a tensor lies outside the file: {err}"
        ) from None


def _check_json(path: pathlib.Path) -> None:
    # The link reader's JSON parse, whose errors already name the file and the fault.
    try:
        read_json_file(path)
    except LinkFileError as err:
        raise ArtifactError(str(err)) from None


def collect_links(paths: list[pathlib.Path]) -> list[Payload]:
    """One payload per link file, published under its base name."""
    payloads: list[Payload] = []
    seen: dict[str, pathlib.Path] = {}
    for path in paths:
        if not path.is_file():
            raise ArtifactError(f"{path}: link file not found")
        if path.name in seen:
            raise ArtifactError(
                f"{path} and {seen[path.name]} would both be published as {path.name}"
            )
        seen[path.name] = path
        if path.suffix == ".safetensors":
            _check_safetensors(path)
        elif path.suffix == ".json":
            _check_json(path)
        payloads.append(Payload.from_file(path.name, path))
    return payloads
