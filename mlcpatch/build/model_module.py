"""Importing a (patched) model definition file from any path and instantiating its model."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any

from mlcpatch.artifact import sha256_file
from mlcpatch.models.registry import ArchInfo


def import_model_file(path: pathlib.Path) -> ModuleType:
    """Import ``path`` as a fresh module (a name unique to its content, so copies never clash)."""
    digest = sha256_file(path)[:16]
    name = f"mlcpatch_built_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import model definition {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def instantiate(
    arch: ArchInfo, module: ModuleType, config_dict: dict[str, Any], dtype: str
) -> tuple[Any, Any]:
    """(config object, model in ``dtype``) built from the definition in ``module``."""
    config_cls = getattr(module, arch.config_class)
    model_cls = getattr(module, arch.model_class)
    config = config_cls.from_dict(config_dict)
    config.dtype = dtype
    model = model_cls(config)
    model.to(dtype)
    return config, model
