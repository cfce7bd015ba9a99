"""sha256 of JSON-able values (cache keys); of files: ``mlcpatch.artifact.sha256_file``."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
