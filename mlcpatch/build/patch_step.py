"""Copying the pristine built-in model definition into the build and patching the copy."""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Any

import mlcpatch
import mlcpatch.patcher as patcher
from mlcpatch.artifact import sha256_file
from mlcpatch.models.registry import ArchInfo, builtin_model_file
from mlcpatch.patcher import PatchError, patch_file

HIDDEN_FUNCTIONS = ("get_last_hidden", "decode_last_hidden")


class PatchStepError(RuntimeError):
    """Our own definition did not patch: a bug in mlcpatch, not a user error (a traceback)."""


def patch_builtin(arch: ArchInfo, dest_dir: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]]:
    """Patch a copy of ``arch``'s definition in ``dest_dir``; (patched file, patch status)."""
    version = getattr(patcher, "__version__", mlcpatch.__version__)
    pristine = builtin_model_file(arch.name)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / pristine.name
    # copyfile, not copy: an installed package may be read-only and the patcher writes in place.
    shutil.copyfile(pristine, dest)
    os.chmod(dest, 0o644)
    try:
        result = patch_file(dest)
    except PatchError as exc:
        raise PatchStepError(f"patching the built-in {arch.name} definition failed: {exc}") from exc
    for leftover in dest_dir.glob(dest.name + ".*"):  # the patcher's backup of the copy
        leftover.unlink()
    before = pristine.read_text(encoding="utf-8")
    after = dest.read_text(encoding="utf-8")
    missing = [f for f in HIDDEN_FUNCTIONS if f"def {f}(" not in after]
    if missing:
        raise PatchStepError(f"patched {dest.name} still lacks {', '.join(missing)}")
    status = {
        "patched": True,
        "patcher_version": version,
        "changed": bool(result.changed),
        "class": getattr(result, "class_name", arch.model_class),
        "functions_added": [f for f in HIDDEN_FUNCTIONS if f"def {f}(" not in before],
        "model_file": arch.model_file,
        "pristine_sha256": sha256_file(pristine),
        "patched_sha256": sha256_file(dest),
    }
    return dest, status
