"""Link files given with --links: checked to be what their name says before they are published."""

from __future__ import annotations

import json
import pathlib
import struct

from mlcpatch.publish.errors import ArtifactError
from mlcpatch.publish.payload import Payload

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def _check_safetensors(path: pathlib.Path) -> None:
    # Header = 8-byte little-endian length + JSON; offsets must stay inside the file. Cheap, and
    # catches a truncated or mis-named file without loading any tensor.
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ArtifactError(f"{path}: too short to be a safetensors file")
        (length,) = struct.unpack("<Q", raw)
        if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise ArtifactError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ArtifactError(f"{path}: not a safetensors file (header is not JSON)") from exc
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__", {}), dict):
        raise ArtifactError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_size = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size
        ):
            raise ArtifactError(f"{path}: tensor {name!r} lies outside the file (truncated?)")


def _check_json(path: pathlib.Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise ArtifactError(f"{path}: not valid JSON (nested too deeply)") from exc


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
