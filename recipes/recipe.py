"""Per-architecture build defaults read from ``recipes/<arch>.toml``."""

from __future__ import annotations

import dataclasses
import pathlib
import tomllib
from typing import Any

RECIPES_DIR = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class Recipe:
    arch: str
    model: str
    quantization: str = "q0f32"
    targets: str = "llvm"
    context_window_size: int | None = None
    prefill_chunk_size: int | None = None
    conv_template: str | None = None


def load_recipe(arch: str) -> Recipe | None:
    """The recipe for ``arch``, or None when the arch has none (all options then explicit)."""
    path = RECIPES_DIR / f"{arch}.toml"
    if not path.is_file():
        return None
    data: dict[str, Any] = tomllib.loads(path.read_text())
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return Recipe(**data)
