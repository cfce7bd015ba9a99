"""Content hashes: sha256 for manifests and LFS, git blob ids for small files on the Hub."""

from __future__ import annotations

import hashlib
import pathlib
from typing import BinaryIO

_CHUNK = 4 * 1024 * 1024


def sha256_stream(stream: BinaryIO) -> str:
    digest = hashlib.sha256()
    while chunk := stream.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return sha256_stream(f)


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub, for files not in LFS) gives a blob with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
