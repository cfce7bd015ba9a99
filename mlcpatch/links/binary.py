"""The compact link file of docs/DESIGN.md: links.safetensors (f16/f32) plus links.json."""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mlcpatch.links.linkfile import (
    AgentInfo,
    LinkFile,
    LinkFileError,
    parse_json,
    read_json_file,
)
from mlcpatch.links.spec import LinkSpec, LinkSpecError, default_hidden_width

FORMAT_VERSION = 1
MANIFEST_NAME = "links.json"
WEIGHTS_NAME = "links.safetensors"
_METADATA_KEY = "links_manifest"
_DTYPES = {"f16": np.float16, "f32": np.float32}
_MANIFEST_LINK_FIELDS = ("name", "kind", "from", "to", "variant", "in_dim", "out_dim")
# Largest safetensors header (JSON) we read; real link files have a few KB.
MAX_HEADER_BYTES = 100 * 1024 * 1024


def binary_paths(path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """(manifest, weights) for a folder, a manifest path or a .safetensors path."""
    if path.suffix == ".safetensors":
        return path.with_suffix(".json"), path
    if path.suffix == ".json":
        return path, path.with_suffix(".safetensors")
    return path / MANIFEST_NAME, path / WEIGHTS_NAME


def manifest_json(link_file: LinkFile, weights_name: str) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "weights": weights_name,
        "agents": [agent.to_json() for agent in link_file.agents],
        "links": [spec.manifest_entry() for spec in link_file.links],
    }


def write_binary(link_file: LinkFile, path: pathlib.Path, dtype: str = "f32") -> pathlib.Path:
    """Write weights and manifest; returns the manifest path."""
    if dtype not in _DTYPES:
        raise LinkFileError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    link_file.validate("links to write")
    manifest_path, weights_path = binary_paths(path)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest = manifest_json(link_file, weights_path.name)
    tensors = {
        key: np.ascontiguousarray(value, dtype=_DTYPES[dtype])
        for key, value in link_file.tensors.items()
    }
    # Both files are written under temporary names and renamed into place, so a stopped write
    # never leaves half a link file. safetensors creates files private (0600); a link file is
    # meant to be served and published, so it gets the mode the umask gives any new file.
    tmp_weights = weights_path.with_name(f".{weights_path.name}.tmp")
    tmp_manifest = manifest_path.with_name(f".{manifest_path.name}.tmp")
    try:
        # The manifest also rides inside the safetensors header, so a lone weights file loads.
        save_file(tensors, str(tmp_weights), metadata={_METADATA_KEY: json.dumps(manifest)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_weights, 0o666 & ~umask)
        tmp_manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        tmp_weights.replace(weights_path)
        tmp_manifest.replace(manifest_path)
    finally:
        tmp_weights.unlink(missing_ok=True)
        tmp_manifest.unlink(missing_ok=True)
    return manifest_path


def read_safetensors_header(path: pathlib.Path) -> dict[str, Any]:
    """The JSON header, read without touching the tensor data; offsets checked against the size."""
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) < 8:
                raise LinkFileError(f"{path}: too short to be a safetensors file")
            (size,) = struct.unpack("<Q", raw)
            if size > file_size - 8:
                raise LinkFileError(f"{path}: header length {size} runs past the end of the file")
            if size > MAX_HEADER_BYTES:
                raise LinkFileError(
                    f"{path}: safetensors header length {size} is over the "
                    f"{MAX_HEADER_BYTES} byte limit (not a link file?)"
                )
            data = f.read(size)
    except OSError as err:
        raise LinkFileError(f"{path}: cannot read ({err.strerror or err})") from err
    if len(data) != size:
        raise LinkFileError(f"{path}: header length {size} runs past the end of the file")
    header = parse_json(data, f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise LinkFileError(f"{path}: safetensors header is not a JSON object")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise LinkFileError(f"{path}: safetensors '__metadata__' is not a JSON object")
    data_size = file_size - 8 - size
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise LinkFileError(f"{path}: tensor {key!r} has no valid 'data_offsets'")
        if offsets[1] > data_size:
            raise LinkFileError(
                f"{path}: tensor {key!r} ends at byte {offsets[1]} of the data, but the file "
                f"holds {data_size} (truncated?)"
            )
    return header


def _spec_from_entry(
    entry: Any, index: int, source: str, tensors: dict[str, np.ndarray]
) -> LinkSpec:
    if not isinstance(entry, dict):
        raise LinkFileError(f"{source}: links[{index}] is not an object")
    for field in _MANIFEST_LINK_FIELDS:
        if field not in entry:
            label = entry.get("name", f"links[{index}]")
            raise LinkFileError(f"{source}: link {label!r} is missing field {field!r}")
    name = entry["name"]
    hidden = entry.get("hidden")
    if hidden is None:
        # Older manifests omit the width: take it from w1, or the variant's default.
        w1 = tensors.get(f"{name}.w1")
        hidden = int(w1.shape[0]) if w1 is not None and w1.ndim == 2 else None
    dims_are_ints = all(
        isinstance(entry[f], int) and not isinstance(entry[f], bool) for f in ("in_dim", "out_dim")
    )
    if hidden is None and not dims_are_ints:
        hidden = 0  # LinkSpec below names the bad dimension
    elif hidden is None:
        hidden = default_hidden_width(
            entry["variant"], entry["kind"], entry["in_dim"], entry["out_dim"]
        )
    try:
        return LinkSpec.from_manifest_entry(entry, hidden)
    except LinkSpecError as err:
        raise LinkFileError(f"{source}: {err}") from err


def parse_manifest(manifest: Any, tensors: dict[str, np.ndarray], source: str) -> LinkFile:
    if not isinstance(manifest, dict):
        raise LinkFileError(f"{source}: manifest is not a JSON object")
    if manifest.get("format") != FORMAT_VERSION:
        raise LinkFileError(
            f"{source}: 'format' is {manifest.get('format')!r}, this reader knows {FORMAT_VERSION}"
        )
    for field in ("agents", "links"):
        if not isinstance(manifest.get(field), list):
            raise LinkFileError(f"{source}: field {field!r} is missing or not a list")
    agents = []
    for index, agent in enumerate(manifest["agents"]):
        if isinstance(agent, str):
            # DESIGN.md allows bare names; dimensions are then checked only against models.
            continue
        agents.append(AgentInfo.from_json(agent, f"{source}: agents[{index}]"))
    if len(agents) != len(manifest["agents"]):
        agents = []
    specs = [
        _spec_from_entry(entry, i, source, tensors) for i, entry in enumerate(manifest["links"])
    ]
    link_file = LinkFile(agents, specs, tensors)
    link_file.validate(source)
    return link_file


def _weights_in_folder(manifest_path: pathlib.Path, weights: Any) -> pathlib.Path:
    """The manifest's 'weights' entry, which must name a file inside the manifest's folder."""
    if not isinstance(weights, str) or not weights:
        raise LinkFileError(f"{manifest_path}: 'weights' {weights!r} is not a file name")
    relative = pathlib.PurePath(weights)
    if relative.is_absolute() or ".." in relative.parts:
        raise LinkFileError(
            f"{manifest_path}: 'weights' {weights!r} must be a relative path inside the "
            "manifest's folder (no absolute paths, no '..')"
        )
    folder = manifest_path.parent
    try:
        resolved = (folder / relative).resolve()
        base = folder.resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise LinkFileError(f"{manifest_path}: 'weights' {weights!r} cannot be resolved") from err
    if not resolved.is_relative_to(base):
        raise LinkFileError(
            f"{manifest_path}: 'weights' {weights!r} leads outside the manifest's folder "
            f"(to {resolved})"
        )
    return resolved


def read_binary(path: pathlib.Path) -> LinkFile:
    manifest_path, weights_path = binary_paths(path)
    manifest: Any = None
    source = str(manifest_path)
    if manifest_path.is_file():
        manifest = read_json_file(manifest_path)
        if isinstance(manifest, dict) and manifest.get("weights") is not None:
            weights_path = _weights_in_folder(manifest_path, manifest["weights"])
    if not weights_path.is_file():
        raise LinkFileError(f"{weights_path}: weights file not found")
    header = read_safetensors_header(weights_path)
    for key, info in header.items():
        if (
            key != "__metadata__"
            and isinstance(info, dict)
            and info.get("dtype")
            not in (
                "F16",
                "F32",
            )
        ):
            raise LinkFileError(
                f"{weights_path}: tensor {key!r} has dtype {info.get('dtype')}, expected F16 or F32"
            )
    if manifest is None:
        embedded = header.get("__metadata__", {}).get(_METADATA_KEY)
        if embedded is None:
            raise LinkFileError(
                f"{manifest_path}: manifest not found and {weights_path.name} carries none"
            )
        source = f"{weights_path}: embedded manifest"
        if not isinstance(embedded, str):
            raise LinkFileError(f"{source} is not a string")
        manifest = parse_json(embedded, source)
    try:
        loaded = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise LinkFileError(f"{weights_path}: not a readable safetensors file ({err})") from err
    tensors = {k: v.astype(np.float32) for k, v in loaded.items()}
    return parse_manifest(manifest, tensors, source)
