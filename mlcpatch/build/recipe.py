"""Per-architecture defaults read from ``recipes/<arch>.toml``: the one source of them, for the
build's options and for the registry's ``ArchInfo.default_conv_template`` alike."""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from typing import Any

from mlcpatch.build.errors import BuildOptionError
from mlcpatch.resources import recipes_dir


@dataclasses.dataclass(frozen=True)
class Recipe:
    arch: str
    model: str
    quantization: str = "q0f32"
    targets: str = "llvm"
    context_window_size: int | None = None
    prefill_chunk_size: int | None = None
    conv_template: str | None = None


def recipe_path(arch: str) -> pathlib.Path:
    return recipes_dir() / f"{arch}.toml"


def load_recipe(arch: str) -> Recipe | None:
    """The recipe for ``arch``, or None when the arch has none (all options then explicit)."""
    path = recipe_path(arch)
    if not path.is_file():
        return None
    data: dict[str, Any] = tomllib.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BuildOptionError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return Recipe(**data)
