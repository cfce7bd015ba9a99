"""The AST patcher: adds get_last_hidden / decode_last_hidden to MLC-style model definitions."""

from mlcpatch.patcher.core import (
    CANNOT_PATCH,
    NOT_PATCHED,
    PATCHED,
    CheckResult,
    PatchResult,
    check_file,
    patch_file,
    revert_file,
)
from mlcpatch.patcher.errors import PatchError

__all__ = [
    "CANNOT_PATCH",
    "NOT_PATCHED",
    "PATCHED",
    "CheckResult",
    "PatchError",
    "PatchResult",
    "check_file",
    "patch_file",
    "revert_file",
]
