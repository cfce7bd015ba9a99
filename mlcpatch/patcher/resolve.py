"""Turning a TARGET (a path or an arch name) into a model file, without importing mlc_llm.

`mlc_llm` cannot be imported to ask it where its files are: importing it loads its native library.
Its registry (`mlc_llm/model/model.py`, the MODELS dict) is read with `ast` instead.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from mlcpatch.patcher.errors import PatchError

MLC_ENV = "MLCPATCH_MLC_LLM"  # a folder holding an mlc_llm package tree, e.g. a source checkout


@dataclass(frozen=True)
class ArchFile:
    arch: str
    path: Path
    class_name: str | None
    origin: str  # "mlc-llm" or "built-in"


def mlc_package_dir() -> Path | None:
    """The mlc_llm package folder: ``$MLCPATCH_MLC_LLM`` when set, else the one this Python
    would import (found by the import system, not imported)."""
    return mlc_override_dir() or mlc_package_here()


def mlc_override_dir() -> Path | None:
    """The package folder ``$MLCPATCH_MLC_LLM`` names (it or its ``mlc_llm`` child), if set."""
    value = os.environ.get(MLC_ENV)
    if not value:
        return None
    folder = Path(value)
    return folder / "mlc_llm" if (folder / "mlc_llm").is_dir() else folder


def mlc_package_here() -> Path | None:
    """The mlc_llm package folder this Python would import, without importing it."""
    try:
        spec = importlib.util.find_spec("mlc_llm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _model_file(model_dir: Path, module_alias: str, imports: dict[str, str]) -> Path | None:
    package = imports.get(module_alias)
    if package is None:
        return None
    path = model_dir / package / f"{module_alias}.py"
    return path if path.is_file() else None


def mlc_archs(package: Path) -> dict[str, ArchFile]:
    """Arch name -> model file and class, from MLC-LLM's registry (or its folder layout)."""
    model_dir = package / "model"
    registry = model_dir / "model.py"
    found: dict[str, ArchFile] = {}
    if registry.is_file():
        tree = ast.parse(registry.read_text(encoding="utf-8"))
        imports: dict[str, str] = {}  # `from .llama import llama_model` -> llama_model: llama
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom) and stmt.level == 1 and stmt.module:
                for alias in stmt.names:
                    imports[alias.asname or alias.name] = stmt.module
        for node in ast.walk(tree):
            if not isinstance(node, ast.Dict):
                continue
            for key, value in zip(node.keys, node.values, strict=True):
                if not (isinstance(key, ast.Constant) and isinstance(value, ast.Call)):
                    continue
                for kw in value.keywords:
                    if kw.arg == "model" and isinstance(kw.value, ast.Attribute):
                        target = kw.value
                        if isinstance(target.value, ast.Name):
                            path = _model_file(model_dir, target.value.id, imports)
                            if path is not None:
                                found[str(key.value)] = ArchFile(
                                    str(key.value), path, target.attr, "mlc-llm"
                                )
    if not found and model_dir.is_dir():
        for path in sorted(model_dir.glob("*/*_model.py")):
            found[path.parent.name] = ArchFile(path.parent.name, path, None, "mlc-llm")
    return found


def builtin_archs() -> dict[str, ArchFile]:
    try:
        from mlcpatch.models.registry import BUILTIN_ARCHS, builtin_model_file
    except ImportError:
        return {}
    return {
        name: ArchFile(name, builtin_model_file(name), info.model_class, "built-in")
        for name, info in BUILTIN_ARCHS.items()
    }


def known_archs(source: str = "auto") -> dict[str, ArchFile]:
    """All arch names for a source: "mlc", "builtin", or "auto" (MLC-LLM's win when installed)."""
    archs: dict[str, ArchFile] = {}
    if source in ("auto", "builtin"):
        archs.update(builtin_archs())
    if source in ("auto", "mlc"):
        package = mlc_package_dir()
        if package is None and source == "mlc":
            raise PatchError(
                "MLC-LLM is not installed (no mlc_llm package found); install it from "
                "https://mlc.ai/package or use the built-in definitions (--source builtin)"
            )
        if package is not None:
            archs.update(mlc_archs(package))
    return archs


def looks_like_path(target: str) -> bool:
    return target.endswith(".py") or os.sep in target or "/" in target or Path(target).exists()


def resolve(target: str, source: str = "auto") -> ArchFile:
    if looks_like_path(target):
        return ArchFile("", Path(target), None, "path")
    archs = known_archs(source)
    if target in archs:
        return archs[target]
    names = ", ".join(sorted(archs)) or "none"
    raise PatchError(f"unknown arch {target!r}; known archs: {names}")
