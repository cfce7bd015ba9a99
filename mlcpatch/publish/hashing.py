"""Git blob ids for small files on the Hub (file sha256s: ``mlcpatch.artifact.sha256_file``)."""

from __future__ import annotations

import hashlib


def git_blob_sha1(data: bytes) -> str:
    """The id git (and the Hub, for files not in LFS) gives a blob with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
