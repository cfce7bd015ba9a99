"""The compact link file of DESIGN.md: links.safetensors (f16/f32) plus a links.json manifest."""

from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mlcpatch.training.linkfile import AgentInfo, LinkFile, LinkFileError
from mlcpatch.training.spec import LinkSpec, LinkSpecError, default_hidden_width

FORMAT_VERSION = 1
MANIFEST_NAME = "links.json"
WEIGHTS_NAME = "links.safetensors"
_METADATA_KEY = "links_manifest"
_DTYPES = {"f16": np.float16, "f32": np.float32}
_MANIFEST_LINK_FIELDS = ("name", "kind", "from", "to", "variant", "in_dim", "out_dim")


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


def _safetensors_header(path: pathlib.Path) -> dict[str, Any]:
    data = path.read_bytes()
    if len(data) < 8:
        raise LinkFileError(f"{path}: too short to be a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise LinkFileError(f"{path}: header length {size} runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LinkFileError(f"{path}: safetensors header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise LinkFileError(f"{path}: safetensors header is not a JSON object")
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
    if hidden is None:
        hidden = default_hidden_width(
            entry["variant"], entry["kind"], entry["in_dim"], entry["out_dim"]
        )
    try:
        return LinkSpec(
            name=name,
            kind=entry["kind"],
            source=entry["from"],
            target=entry["to"],
            variant=entry["variant"],
            in_dim=entry["in_dim"],
            out_dim=entry["out_dim"],
            hidden=hidden,
            activation=entry.get("activation", "gelu"),
        )
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
        if not isinstance(agent, dict) or "name" not in agent or "hidden_size" not in agent:
            raise LinkFileError(f"{source}: agents[{index}] needs 'name' and 'hidden_size'")
        agents.append(AgentInfo(agent["name"], int(agent["hidden_size"]), agent.get("model", "")))
    if len(agents) != len(manifest["agents"]):
        agents = []
    specs = [
        _spec_from_entry(entry, i, source, tensors) for i, entry in enumerate(manifest["links"])
    ]
    link_file = LinkFile(agents, specs, tensors)
    link_file.validate(source)
    return link_file


def read_binary(path: pathlib.Path) -> LinkFile:
    manifest_path, weights_path = binary_paths(path)
    manifest: Any = None
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise LinkFileError(f"{manifest_path}: not valid JSON ({err})") from err
        if isinstance(manifest, dict) and isinstance(manifest.get("weights"), str):
            weights_path = manifest_path.parent / manifest["weights"]
    if not weights_path.is_file():
        raise LinkFileError(f"{weights_path}: weights file not found")
    header = _safetensors_header(weights_path)
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
        embedded = (header.get("__metadata__") or {}).get(_METADATA_KEY)
        if embedded is None:
            raise LinkFileError(
                f"{manifest_path}: manifest not found and {weights_path.name} carries none"
            )
        manifest = json.loads(embedded)
    tensors = {k: v.astype(np.float32) for k, v in load_file(str(weights_path)).items()}
    return parse_manifest(manifest, tensors, str(manifest_path))
