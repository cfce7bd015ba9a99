"""Writing parameters as ``tensor-cache.json`` + ``params_shard_*.bin``.

The layout is the one ``tvm.contrib.tvmjs.dump_tensor_cache`` writes and the JS runtime's
``fetchTensorCache`` reads ("raw-shard" files of concatenated "raw" records). It is written here
rather than through ``dump_tensor_cache`` because that function defaults to lossy bf16 encoding,
prints to stdout and keeps no per-shard sha256, while this writer streams: only the shard being
filled is held in memory.
Shards stay within 32 MiB except when one tensor alone is larger.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Any

import numpy as np

from mlcpatch.artifact import TENSOR_CACHE

SHARD_CAP_BYTES = 32 * 1024 * 1024


class TensorCacheWriter:
    def __init__(self, out_dir: pathlib.Path, shard_cap_bytes: int = SHARD_CAP_BYTES) -> None:
        self.out_dir = out_dir
        self.cap = shard_cap_bytes
        self.shards: list[dict[str, Any]] = []
        self._records: list[dict[str, Any]] = []
        self._data = bytearray()
        self._names: set[str] = set()
        self.param_count = 0
        self.param_bytes = 0

    def add(self, name: str, array: np.ndarray) -> None:
        if name in self._names:
            raise ValueError(f"duplicate parameter {name}")
        self._names.add(name)
        data = np.ascontiguousarray(array).tobytes()
        # A record cannot span files, so a tensor larger than the cap gets a shard of its own
        # (as dump_tensor_cache does); every other shard stays within the cap.
        if self._data and len(self._data) + len(data) > self.cap:
            self._flush()
        self._records.append(
            {
                "name": name,
                "shape": list(array.shape),
                "dtype": str(array.dtype),
                "format": "raw",
                "nbytes": len(data),
                "byteOffset": len(self._data),
            }
        )
        self._data += data
        self.param_count += int(array.size)
        self.param_bytes += len(data)
        if len(self._data) >= self.cap:
            self._flush()

    def _flush(self) -> None:
        if not self._records:
            return
        name = f"params_shard_{len(self.shards)}.bin"
        (self.out_dir / name).write_bytes(self._data)
        self.shards.append(
            {
                "dataPath": name,
                "format": "raw-shard",
                "nbytes": len(self._data),
                "records": self._records,
                "md5sum": hashlib.md5(self._data).hexdigest(),
            }
        )
        self._records, self._data = [], bytearray()

    def finish(self, metadata: dict[str, Any] | None = None) -> pathlib.Path:
        self._flush()
        meta = {
            "ParamSize": self.param_count,
            "ParamBytes": self.param_bytes,
            "BitsPerParam": 8.0 * self.param_bytes / max(self.param_count, 1),
            **(metadata or {}),
        }
        path = self.out_dir / TENSOR_CACHE
        path.write_text(json.dumps({"metadata": meta, "records": self.shards}, indent=2))
        return path
