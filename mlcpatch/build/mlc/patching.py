"""Patching MLC-LLM's own model file in place for the length of a build, and reverting it."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlcpatch
import mlcpatch.patcher as patcher
from mlcpatch.build.mlc.errors import MlcBuildError
from mlcpatch.patcher import PatchError, patch_file, revert_file
from mlcpatch.patcher.files import BACKUP_SUFFIX
from mlcpatch.patcher.resolve import ArchFile

HIDDEN_FUNCTIONS = ("get_last_hidden", "decode_last_hidden")


def _backups(path: Path) -> set[Path]:
    return set(path.parent.glob(path.name + BACKUP_SUFFIX + "*"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def patched_model(
    found: ArchFile, keep: bool, log: Callable[[str], None]
) -> Iterator[dict[str, Any]]:
    """Patch ``found`` in place for the block, then revert it byte for byte (also when the block
    raises) unless ``keep``. A file that was already patched is left exactly as found.

    Yields the patch status; its ``after_build`` entry is filled in when the block ends.
    """
    path = found.path
    try:
        original = path.read_bytes()
        backups_before = _backups(path)
        result = patch_file(path, class_name=found.class_name)
        before = result.before if result.changed else revert_file(path, dry_run=True).after
    except PatchError as exc:
        raise MlcBuildError(f"cannot patch MLC-LLM's {found.arch} model: {exc}") from exc
    except OSError as exc:
        raise MlcBuildError(f"cannot patch {path}: {exc.strerror or exc}") from exc
    pristine = before.encode("utf-8")
    ours = result.changed
    status: dict[str, Any] = {
        "patched": True,
        "patcher_version": getattr(patcher, "__version__", mlcpatch.__version__),
        "changed": ours,
        "was_patched_before": not ours,
        "class": result.class_name or found.class_name,
        "functions_added": [
            f for f in HIDDEN_FUNCTIONS if f"def {f}(" not in pristine.decode("utf-8")
        ],
        "model_file": str(path),
        "origin": "mlc-llm",
        "pristine_sha256": _sha256(pristine),
        "patched_sha256": _sha256(result.after.encode("utf-8")),
        "after_build": "",
    }
    log(
        f"patched {path} ({status['class']}, {result.mode})"
        if ours
        else f"{path} was already patched; leaving it as it is"
    )
    revert = ours and not keep

    def undo() -> None:
        revert_file(path)
        if path.read_bytes() != original:
            raise PatchError(f"{path}: reverting did not restore the original bytes")
        for leftover in _backups(path) - backups_before:
            leftover.unlink()
        log(f"reverted {path}")

    try:
        yield status
    except BaseException as exc:
        if revert:
            try:
                undo()
            except (PatchError, OSError) as undo_exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise MlcBuildError(
                    f"{first}; and reverting the patch of {path} failed too ({undo_exc}); "
                    f"undo it with: mlcpatch patch {path} --revert --force"
                ) from exc
        raise
    if revert:
        try:
            undo()
        except (PatchError, OSError) as exc:
            raise MlcBuildError(
                f"the build finished but reverting the patch of {path} failed ({exc}); undo it "
                f"with: mlcpatch patch {path} --revert --force"
            ) from exc
        status["after_build"] = "reverted"
    elif ours:
        status["after_build"] = "kept"
        log(f"kept the patch in {path} (--keep-patch); undo: mlcpatch patch {path} --revert")
    else:
        status["after_build"] = "left as found (patched before the build)"
