"""Reading HF checkpoint tensors lazily, one at a time, from a local model folder.

safetensors files are parsed directly (header + mmap) so bf16 checkpoints need no torch and the
peak memory stays near one tensor; ``pytorch_model*.bin`` files go through
``torch.load(mmap=True)``.
"""

from __future__ import annotations

import json
import mmap
import pathlib
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

from mlcpatch.errors import MlcpatchError

_SAFETENSORS_DTYPES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class WeightFormatError(MlcpatchError, ValueError):
    """The model folder has no usable weights, or a weight file is malformed."""


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    # bf16 is the top half of an f32: widening is exact.
    return (raw.astype(np.uint32) << 16).view(np.float32)


class _SafetensorsFile:
    def __init__(self, path: pathlib.Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise WeightFormatError(f"{path}: truncated safetensors file")
            (header_len,) = struct.unpack("<Q", head)
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise WeightFormatError(f"{path}: unreadable safetensors header ({exc})") from exc
        header.pop("__metadata__", None)
        self.entries: dict[str, dict[str, Any]] = header
        self.data_start = 8 + header_len
        self._mmap: mmap.mmap | None = None

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def read(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise WeightFormatError(f"{self.path}: {name} has unsupported dtype {entry['dtype']}")
        if self._mmap is None:
            with open(self.path, "rb") as f:
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        begin, end = entry["data_offsets"]
        if self.data_start + end > len(self._mmap):
            raise WeightFormatError(f"{self.path}: {name} lies past the end of the file")
        buf = self._mmap[self.data_start + begin : self.data_start + end]
        shape = tuple(entry["shape"])
        if dtype == "bfloat16":
            return _bf16_to_f32(np.frombuffer(buf, dtype=np.uint16)).reshape(shape)
        return np.frombuffer(buf, dtype=dtype).reshape(shape).copy()


class _TorchBinFile:
    def __init__(self, path: pathlib.Path) -> None:
        import torch  # only .bin checkpoints need torch

        self.path = path
        try:
            self.state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise WeightFormatError(f"{path}: cannot read PyTorch checkpoint ({exc})") from exc

    def names(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def read(self, name: str) -> np.ndarray:
        import torch

        tensor = self.state[name]
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy().copy()


class HFWeights:
    """Name -> tensor access over every weight file of an HF model folder."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.files = self._weight_files(folder)
        self._index: dict[str, _SafetensorsFile | _TorchBinFile] = {}
        for path in self.files:
            reader = (
                _SafetensorsFile(path) if path.suffix == ".safetensors" else _TorchBinFile(path)
            )
            for name in reader.names():
                self._index[name] = reader

    @staticmethod
    def _weight_files(folder: pathlib.Path) -> list[pathlib.Path]:
        layouts = (
            ("*.safetensors", "model.safetensors.index.json"),
            ("pytorch_model*.bin", "pytorch_model.bin.index.json"),
        )
        for pattern, index_name in layouts:
            index = folder / index_name
            if index.is_file():
                # A sharded checkpoint: the index names every shard; all must be present.
                wanted = sorted(set(json.loads(index.read_text())["weight_map"].values()))
                missing = [n for n in wanted if not (folder / n).is_file()]
                if missing:
                    raise WeightFormatError(
                        f"{folder}: weight file(s) named in {index_name} are missing: "
                        + ", ".join(missing)
                    )
                return [folder / n for n in wanted]
            files = sorted(folder.glob(pattern))
            if files:
                return files
        raise WeightFormatError(
            f"{folder}: no weight files (*.safetensors or pytorch_model*.bin) found"
        )

    def names(self) -> list[str]:
        return list(self._index)

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def shape(self, name: str) -> tuple[int, ...]:
        return self._index[name].shape(name)

    def read(self, name: str) -> np.ndarray:
        return self._index[name].read(name)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self._index:
            yield name, self.read(name)
