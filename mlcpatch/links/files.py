"""Read and write link files in either format, chosen from the path; convert between them."""

from __future__ import annotations

import pathlib

from mlcpatch.links.binary import MANIFEST_NAME, WEIGHTS_NAME, read_binary, write_binary
from mlcpatch.links.linkfile import LinkFile, LinkFileError, read_json_file
from mlcpatch.links.recursivelink import FILE_NAME as JSON_NAME
from mlcpatch.links.recursivelink import read_json, write_json

FORMATS = ("json", "binary")
# What a folder of links holds under the conventional names (the trainer writes all three).
FILE_NAMES = (MANIFEST_NAME, WEIGHTS_NAME, JSON_NAME)


def detect_format(path: pathlib.Path) -> str:
    """'binary' for folders, .safetensors and links.json manifests; else 'json'."""
    if path.is_dir() or path.suffix == ".safetensors":
        return "binary"
    if path.suffix != ".json":
        raise LinkFileError(f"{path}: not a folder, .safetensors or .json link file")
    if path.is_file():
        head = read_json_file(path)
        return "binary" if isinstance(head, dict) and "format" in head else "json"
    return "binary" if path.name == MANIFEST_NAME else "json"


def output_format(path: pathlib.Path) -> str:
    """Format to write at a path that may not exist yet."""
    if path.suffix == ".safetensors" or path.name == MANIFEST_NAME or not path.suffix:
        return "binary"
    if path.suffix == ".json":
        return "json"
    raise LinkFileError(f"{path}: write to a folder, a .safetensors or a .json path")


def load_links(path: pathlib.Path | str) -> LinkFile:
    path = pathlib.Path(path)
    if not path.exists():
        raise LinkFileError(f"{path}: no such file or folder")
    return read_binary(path) if detect_format(path) == "binary" else read_json(path)


def save_links(
    link_file: LinkFile, path: pathlib.Path | str, fmt: str | None = None, dtype: str = "f32"
) -> pathlib.Path:
    path = pathlib.Path(path)
    fmt = fmt or output_format(path)
    if fmt == "binary":
        return write_binary(link_file, path, dtype=dtype)
    if fmt == "json":
        if dtype != "f32":
            raise LinkFileError("recursivelink.json stores f32 numbers; dtype applies to binary")
        return write_json(link_file, path)
    raise LinkFileError(f"format {fmt!r} is not one of {FORMATS}")


def convert_links(
    source: pathlib.Path | str,
    target: pathlib.Path | str,
    fmt: str | None = None,
    dtype: str = "f32",
) -> pathlib.Path:
    return save_links(load_links(source), target, fmt=fmt, dtype=dtype)
