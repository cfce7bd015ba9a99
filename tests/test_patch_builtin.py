"""The patcher on the built-in definitions, checked the strongest way: export with TVM."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mlcpatch.models.registry import BUILTIN_ARCHS, builtin_model_file
from mlcpatch.patcher import NOT_PATCHED, PatchError, check_file, patch_file
from mlcpatch.patcher.verify import builtin_verifier

pytestmark = pytest.mark.heavy


@pytest.mark.parametrize("arch", sorted(BUILTIN_ARCHS))
def test_builtin_definitions_ship_unpatched(arch: str) -> None:
    assert check_file(builtin_model_file(arch)).code == NOT_PATCHED


@pytest.mark.parametrize("arch", sorted(BUILTIN_ARCHS))
def test_patched_builtin_exports_both_functions(arch: str, tmp_path: Path) -> None:
    copy = tmp_path / builtin_model_file(arch).name
    shutil.copy(builtin_model_file(arch), copy)
    result = patch_file(copy, verifier=builtin_verifier(arch))
    assert result.changed
    assert result.class_name == BUILTIN_ARCHS[arch].model_class
    assert "exported functions: decode, decode_last_hidden, get_last_hidden, prefill" in (
        result.notes
    )


def test_verifier_rejects_a_module_without_the_functions(tmp_path: Path) -> None:
    copy = tmp_path / "qwen2_model.py"
    shutil.copy(builtin_model_file("qwen2"), copy)
    verify = builtin_verifier("qwen2")
    missing = "exported module lacks get_last_hidden, decode_last_hidden"
    with pytest.raises(PatchError, match=missing):
        verify(copy, copy.read_text(), BUILTIN_ARCHS["qwen2"].model_class)
