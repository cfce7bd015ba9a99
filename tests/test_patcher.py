"""The AST patcher on hand-written MLC-style fixtures: each shape, each command, each bad input."""

from __future__ import annotations

import ast
import difflib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mlcpatch.cli import main
from mlcpatch.patcher import (
    CANNOT_PATCH,
    NOT_PATCHED,
    PATCHED,
    PatchError,
    check_file,
    patch_file,
    revert_file,
)

FIXTURES = Path(__file__).parent / "fixtures" / "mlc_models"
CHILD = "pkg/mlc_llm/model/child_family/child_family_model.py"
RELATIVE_CHILD = "pkg/mlc_llm/model/child_family/relative_child_model.py"
PATCHABLE = [
    "qwen2_untied.py",
    "qwen2_tied_compact.py",
    "llama_has_hidden.py",
    "scaled_hidden.py",
    CHILD,
    RELATIVE_CHILD,
]


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A private copy of the fixtures, so tests may patch them."""
    target = tmp_path / "models"
    shutil.copytree(FIXTURES, target)
    return target


def _class(tree: ast.Module, name: str | None = None) -> ast.ClassDef:
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    if name is None:
        return classes[-1]
    return next(c for c in classes if c.name == name)


def _method(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name), None)


def _params(fn: ast.FunctionDef) -> list[str]:
    return [a.arg for a in fn.args.args]


def _only_insertions(before: str, after: str) -> bool:
    """True when `after` is `before` with whole lines inserted and nothing else changed."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return all(tag in ("equal", "insert") for tag, *_ in ops)


@pytest.mark.parametrize("name", PATCHABLE)
def test_patch_inserts_lines_only_and_reverts_byte_for_byte(models: Path, name: str) -> None:
    path = models / name
    original = path.read_bytes()
    result = patch_file(path)
    patched = path.read_bytes()
    assert result.changed and patched != original
    assert _only_insertions(original.decode(), patched.decode())
    compile(patched, str(path), "exec")
    # Idempotent: a second patch changes nothing.
    again = patch_file(path)
    assert not again.changed and path.read_bytes() == patched
    assert check_file(path).code == PATCHED
    revert_file(path)
    assert path.read_bytes() == original
    assert check_file(path).code == NOT_PATCHED


def test_copied_methods_mirror_prefill_and_decode(models: Path) -> None:
    path = models / "qwen2_untied.py"
    patch_file(path)
    cls = _class(ast.parse(path.read_text()), "Qwen2LikeLMHeadModel")
    hidden, decode_hidden = _method(cls, "get_last_hidden"), _method(cls, "decode_last_hidden")
    assert hidden is not None and decode_hidden is not None
    assert _params(hidden) == _params(_method(cls, "prefill"))
    assert _params(decode_hidden) == _params(_method(cls, "decode"))
    body = [ast.unparse(s) for s in hidden.body[1:]]  # after the docstring
    assert body == [
        "op_ext.configure()",
        "hidden_states = self.model(input_embed, paged_kv_cache)",
        "return (hidden_states, paged_kv_cache)",
    ]
    # The new methods must not index the last token or apply the LM head.
    for fn in (hidden, decode_hidden):
        text = ast.unparse(fn)
        assert "index_last_token" not in text and "lm_head" not in text


def test_spec_entries_copy_the_neighbouring_format(models: Path) -> None:
    path = models / "qwen2_untied.py"
    patch_file(path)
    text = path.read_text()
    cls = _class(ast.parse(text), "Qwen2LikeLMHeadModel")
    spec = _method(cls, "get_default_spec")
    mapping = next(
        n
        for n in ast.walk(spec)
        if isinstance(n, ast.Dict)
        and n.keys
        and isinstance(n.keys[0], ast.Constant)
        and n.keys[0].value == "embed"
    )
    entries = {k.value: ast.unparse(v) for k, v in zip(mapping.keys, mapping.values, strict=True)}
    assert entries["get_last_hidden"] == entries["prefill"]
    assert entries["decode_last_hidden"] == entries["decode"]
    keys = list(entries)
    assert keys.index("get_last_hidden") == keys.index("decode") + 1  # right after decode
    assert '"$": {\n                    "param_mode": "packed",' in text.split("get_last_hidden")[2]


def test_existing_hidden_state_functions_are_delegated_to(models: Path) -> None:
    path = models / "llama_has_hidden.py"
    result = patch_file(path)
    assert result.mode == "delegate"
    cls = _class(ast.parse(path.read_text()))
    hidden = _method(cls, "get_last_hidden")
    decode_hidden = _method(cls, "decode_last_hidden")
    assert ast.unparse(hidden.body[-1]) == (
        "return self.prefill_to_last_hidden_states(input_embed, paged_kv_cache)"
    )
    assert ast.unparse(decode_hidden.body[-1]) == (
        "return self.decode_to_last_hidden_states(input_embed, paged_kv_cache)"
    )


def test_old_style_prefill_and_compact_spec(models: Path) -> None:
    path = models / "qwen2_tied_compact.py"
    original = path.read_text()
    patch_file(path)
    cls = _class(ast.parse(path.read_text()))
    hidden = _method(cls, "get_last_hidden")
    text = ast.unparse(hidden)
    assert _params(hidden) == ["self", "inputs", "paged_kv_cache"]
    assert "_index" not in text  # the unused last-token helper is not copied
    assert "self.transformer(inputs, paged_kv_cache)" in text
    spec = _method(cls, "get_default_spec")
    mapping = next(n for n in ast.walk(spec) if isinstance(n, ast.Dict))
    keys = [k.value for k in mapping.keys]
    assert keys == ["prefill", "get_last_hidden", "decode_last_hidden", "decode"]
    # Single-quoted keys stay single-quoted.
    assert "'get_last_hidden': {'inputs'" in path.read_text()
    assert _only_insertions(original, path.read_text())


def test_hidden_state_shaping_in_decode_is_kept(models: Path) -> None:
    path = models / "scaled_hidden.py"
    patch_file(path)
    cls = _class(ast.parse(path.read_text()))
    for name in ("get_last_hidden", "decode_last_hidden"):
        body = [ast.unparse(s) for s in _method(cls, name).body[1:]]
        assert body == [
            "hidden_states = self.model(input_embed, paged_kv_cache) / self.scale_width",
            "hidden_states = self.final_scale(hidden_states)",
            "return (hidden_states, paged_kv_cache)",
        ]
    # The spec is a one-line dict: entries are added by subscript after it, using its locals.
    spec = ast.unparse(_method(cls, "get_default_spec"))
    assert (
        "mod_spec['get_last_hidden'] = {'input_embed': nn.spec.Tensor([1, 'seq_len', hidden]"
        in spec
    )


@pytest.mark.parametrize("name", [CHILD, RELATIVE_CHILD])
def test_inherited_prefill_is_followed_into_the_parent_module(models: Path, name: str) -> None:
    path = models / name
    result = patch_file(path)
    tree = ast.parse(path.read_text())
    cls = _class(tree)
    assert result.class_name == cls.name
    hidden = _method(cls, "get_last_hidden")
    assert [ast.unparse(s) for s in hidden.body[1:]] == [
        "op_ext.configure()",
        "hidden_states = self.model(input_embed, paged_kv_cache)",
        "return (hidden_states, paged_kv_cache)",
    ]
    spec = ast.unparse(_method(cls, "get_default_spec"))
    assert "super().get_default_spec()" in spec
    assert "mod_spec['get_last_hidden']" in spec and "mod_spec['decode_last_hidden']" in spec
    # Names the copied code needs are imported, resolved to absolute module names.
    imports = {ast.unparse(s) for s in tree.body if isinstance(s, ast.ImportFrom)}
    assert "from mlc_llm import op as op_ext" in imports
    assert "from mlc_llm.nn import PagedKVCache" in imports
    # The parent module is untouched.
    parent = models / "pkg/mlc_llm/model/base_family/base_family_model.py"
    assert parent.read_bytes() == (FIXTURES / parent.relative_to(models)).read_bytes()


def test_crlf_files_keep_their_line_endings(models: Path) -> None:
    path = models / "qwen2_untied.py"
    original = path.read_bytes().replace(b"\n", b"\r\n")
    path.write_bytes(original)
    patch_file(path)
    patched = path.read_bytes()
    assert b"get_last_hidden" in patched
    assert patched.count(b"\n") == patched.count(b"\r\n")
    revert_file(path)
    assert path.read_bytes() == original


def test_backup_holds_the_previous_content(models: Path) -> None:
    path = models / "qwen2_untied.py"
    original = path.read_bytes()
    result = patch_file(path)
    assert result.backup is not None and result.backup.read_bytes() == original
    patched = path.read_bytes()
    reverted = revert_file(path)
    # The first backup is kept; the patched version goes to a new one.
    assert result.backup.read_bytes() == original
    assert reverted.backup is not None and reverted.backup.read_bytes() == patched


def test_revert_refuses_after_edits_unless_forced(models: Path) -> None:
    path = models / "qwen2_untied.py"
    patch_file(path)
    edited = path.read_text().replace('self.dtype = "float32"', 'self.dtype = "float16"')
    path.write_text(edited)
    with pytest.raises(PatchError, match="edited since patching"):
        revert_file(path)
    assert path.read_text() == edited
    revert_file(path, force=True)
    text = path.read_text()
    assert "get_last_hidden" not in text and 'self.dtype = "float16"' in text


def test_revert_refuses_when_a_block_was_edited(models: Path) -> None:
    path = models / "qwen2_untied.py"
    patch_file(path)
    edited = path.read_text().replace(
        "op_ext.configure()\n        hidden_states = self.model", "hidden_states = self.model", 1
    )
    path.write_text(edited)
    with pytest.raises(PatchError, match="block was edited"):
        revert_file(path)
    assert check_file(path).code == CANNOT_PATCH
    assert path.read_text() == edited


def test_damaged_markers_are_reported(models: Path) -> None:
    path = models / "qwen2_untied.py"
    patch_file(path)
    text = path.read_text()
    path.write_text(text.replace("# <<< mlcpatch:spec", "# end"))
    with pytest.raises(PatchError, match="never closed|without its begin"):
        revert_file(path)


# --- the command line ---------------------------------------------------------------------------


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_check_exit_codes(models: Path) -> None:
    path = str(models / "qwen2_untied.py")
    code, out, _ = run("patch", path, "--check")
    assert code == NOT_PATCHED and "not patched" in out
    assert run("patch", path)[0] == 0
    code, out, _ = run("patch", path, "--check")
    assert code == PATCHED and "patched" in out
    code, _, err = run("patch", str(models / "rnn_state.py"), "--check")
    assert code == CANNOT_PATCH and "returns `self.forward(input_embed, state)` directly" in err


def test_cli_diff_prints_and_changes_nothing(models: Path) -> None:
    path = models / "qwen2_untied.py"
    before = path.read_bytes()
    code, out, _ = run("patch", str(path), "--diff")
    assert code == 0
    assert out.startswith("--- a/qwen2_untied.py\n+++ b/qwen2_untied.py\n")
    signature = "def get_last_hidden(self, input_embed: Tensor, paged_kv_cache: PagedKVCache):"
    assert f"+    {signature}" in out
    assert all(line[0] in " +@-" for line in out.splitlines() if line)
    assert not [line for line in out.splitlines()[2:] if line.startswith("-")]
    assert path.read_bytes() == before
    assert not list(models.glob("qwen2_untied.py.mlcpatch-bak*"))


def test_cli_patch_then_revert(models: Path) -> None:
    path = models / "qwen2_untied.py"
    before = path.read_bytes()
    code, out, _ = run("patch", str(path))
    assert code == 0 and out.startswith("patched: ") and "backup:" in out
    code, out, _ = run("patch", str(path))
    assert code == 0 and out.startswith("already patched: ")
    code, out, _ = run("patch", str(path), "--revert", "--diff")
    assert code == 0 and "-    def get_last_hidden" in out
    code, out, _ = run("patch", str(path), "--revert")
    assert code == 0 and out.startswith("reverted: ")
    assert path.read_bytes() == before


def test_cli_force_needs_revert(models: Path) -> None:
    code, _, err = run("patch", str(models / "qwen2_untied.py"), "--force")
    assert code == CANNOT_PATCH and "--force only applies to --revert" in err


def _bad_inputs(models: Path) -> dict[str, tuple[Path, str]]:
    text_file = models / "notes.txt"
    text_file.write_text("hello")
    binary = models / "binary.py"
    binary.write_bytes(b"\x7fELF\x00\x01\x02")
    latin = models / "latin.py"
    latin.write_bytes("x = 'caf\xe9'\n".encode("latin-1"))
    readonly = models / "readonly.py"
    shutil.copy(models / "qwen2_untied.py", readonly)
    readonly.chmod(stat.S_IRUSR | stat.S_IRGRP)
    link = models / "link.py"
    link.symlink_to(models / "qwen2_untied.py")
    return {
        "not python": (text_file, "not a Python source file"),
        "binary": (binary, "not Python source (binary data)"),
        "not utf-8": (latin, "not UTF-8"),
        "syntax error": (models / "syntax_error.py", "syntax_error.py:1: syntax error"),
        "no spec": (models / "no_spec.py", "no class defines get_default_spec()"),
        "no hidden call": (models / "rnn_state.py", "there is no hidden-state value to expose"),
        "read-only": (readonly, "read-only"),
        "missing": (models / "missing.py", "no such file"),
        "symlink": (link, "is a symlink"),
        "directory": (models / "pkg.py", "not a regular file"),
        "unfollowable parent": (
            models / "pkg/mlc_llm/model/child_family/orphan_model.py",
            "cannot follow import of SomeBaseForCausalLM from other_package.models",
        ),
    }


# Revert only needs the file to be a readable, writable Python file; the rest is "not patched".
REVERT_OK = {"no spec", "no hidden call", "unfollowable parent"}


def test_bad_inputs_give_one_line_errors_and_leave_files_alone(models: Path) -> None:
    (models / "pkg.py").mkdir()
    for label, (path, message) in _bad_inputs(models).items():
        before = path.read_bytes() if path.is_file() else None
        for extra in ([], ["--check"], ["--diff"], ["--revert"]):
            if label == "read-only" and extra in (["--check"], ["--diff"]):
                continue  # reading a read-only, patchable file is fine
            code, out, err = run("patch", str(path), *extra)
            if extra == ["--revert"] and label in REVERT_OK:
                assert code == 0 and out.startswith("not patched"), (label, out, err)
                continue
            assert code == CANNOT_PATCH, (label, extra, out, err)
            assert message in err, (label, extra, err)
            assert len(err.strip().splitlines()) == 1, (label, err)
        if before is not None:
            assert path.read_bytes() == before, label
    leftovers = [p.name for p in models.iterdir() if p.name.startswith(".") or "bak" in p.name]
    assert leftovers == []


def test_read_only_file_can_still_be_checked(models: Path) -> None:
    path = _bad_inputs(models)["read-only"][0]
    code, out, _ = run("patch", str(path), "--check")
    assert code == NOT_PATCHED


def test_unknown_arch_lists_the_known_ones() -> None:
    code, _, err = run("patch", "no_such_arch", "--source", "builtin")
    assert code == CANNOT_PATCH
    assert "unknown arch 'no_such_arch'; known archs: gemma3, llama, mistral, qwen2, qwen3" in err


def test_arch_names_resolve_into_an_mlc_package_without_importing_it(models: Path) -> None:
    env = {"MLCPATCH_MLC_LLM": str(models / "pkg")}
    code, out, _ = run("archs", "--source", "mlc", "--status", env=env)
    assert code == 0
    lines = out.splitlines()
    assert any(line.startswith("child_family") and "not patched" in line for line in lines)
    code, out, _ = run("patch", "child_family", "--source", "mlc", env=env)
    assert code == 0 and "ChildFamilyForCausalLM" in out
    assert "get_last_hidden" in (models / CHILD).read_text()


def test_installed_mlc_llm_is_found_by_the_import_system_not_imported(models: Path) -> None:
    """A real subprocess with the fixture package on PYTHONPATH; its __init__ raises if imported."""
    env = dict(os.environ, PYTHONPATH=str(models / "pkg"))
    env.pop("MLCPATCH_MLC_LLM", None)
    mlcpatch = Path(sys.executable).with_name("mlcpatch")
    proc = subprocess.run(
        [str(mlcpatch), "patch", "base_family", "--check"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == NOT_PATCHED, proc.stderr
    assert "base_family_model.py: not patched (BaseFamilyForCausalLM" in proc.stdout
    proc = subprocess.run(
        [str(mlcpatch), "patch", "base_family", "--source", "mlc"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert check_file(models / "pkg/mlc_llm/model/base_family/base_family_model.py").code == PATCHED


def test_missing_mlc_llm_gives_a_clear_message(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("MLCPATCH_MLC_LLM", None)
    mlcpatch = Path(sys.executable).with_name("mlcpatch")
    proc = subprocess.run(
        [str(mlcpatch), "archs", "--source", "mlc"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == CANNOT_PATCH
    assert "MLC-LLM is not installed" in proc.stderr and "--source builtin" in proc.stderr


def test_several_model_classes_need_a_choice(models: Path) -> None:
    path = models / "two_models.py"
    text = (models / "qwen2_untied.py").read_text()
    second = text[text.index("class Qwen2LikeLMHeadModel") :].replace(
        "class Qwen2LikeLMHeadModel", "class OtherLMHeadModel"
    )
    path.write_text(text + "\n\n" + second)
    with pytest.raises(PatchError, match="several model classes"):
        patch_file(path)
    result = patch_file(path, class_name="OtherLMHeadModel")
    cls = _class(ast.parse(path.read_text()), "OtherLMHeadModel")
    assert result.class_name == "OtherLMHeadModel" and _method(cls, "get_last_hidden")
    assert (
        _method(_class(ast.parse(path.read_text()), "Qwen2LikeLMHeadModel"), "get_last_hidden")
        is None
    )


# --- odd encodings, file metadata and size --------------------------------------------------------


def test_lone_cr_line_endings_are_refused_cleanly(models: Path) -> None:
    path = models / "qwen2_untied.py"
    original = path.read_bytes().replace(b"\n", b"\r")
    path.write_bytes(original)
    with pytest.raises(PatchError, match=r"qwen2_untied.py:1: line ends with a lone carriage"):
        patch_file(path)
    code, _, err = run("patch", str(path), "--check")
    assert code == CANNOT_PATCH and "lone carriage return" in err
    for extra in ([], ["--diff"], ["--revert"]):
        code, _, err = run("patch", str(path), *extra)
        assert code == CANNOT_PATCH and len(err.strip().splitlines()) == 1, (extra, err)
    assert path.read_bytes() == original
    # One stray CR in a CRLF file: the line is named as Python counts lines.
    crlf = (models / "llama_has_hidden.py").read_bytes().replace(b"\n", b"\r\n")
    lines = crlf.split(b"\r\n")
    lines[4] += b"\r"
    path.write_bytes(b"\r\n".join(lines))
    assert check_file(path).message.startswith(f"cannot be patched: {path}:5: line ends with")


def test_check_reports_a_crash_as_cannot_patch(models: Path, monkeypatch) -> None:
    """A bug keeps its traceback, and --check still never exits 1 ("not patched") for it."""

    def crash(*args, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr("mlcpatch.patcher.command.check_file", crash)
    code, _, err = run("patch", str(models / "qwen2_untied.py"), "--check")
    assert code == CANNOT_PATCH and "Traceback (most recent call last)" in err
    assert err.strip().endswith("IndexError: list index out of range")


def test_bom_files_patch_and_keep_their_bom(models: Path) -> None:
    bom = b"\xef\xbb\xbf"
    path = models / "qwen2_untied.py"
    original = bom + path.read_bytes()
    path.write_bytes(original)
    assert check_file(path).code == NOT_PATCHED
    result = patch_file(path)
    patched = path.read_bytes()
    assert result.changed and patched.startswith(bom) and not patched[3:].startswith(bom)
    assert b"def get_last_hidden" in patched
    compile(patched, str(path), "exec")  # Python itself accepts the BOM
    assert result.backup is not None and result.backup.read_bytes() == original
    assert check_file(path).code == PATCHED
    assert not patch_file(path).changed
    revert_file(path)
    assert path.read_bytes() == original
    # A parent module with a BOM is followed as well.
    parent = models / "pkg/mlc_llm/model/base_family/base_family_model.py"
    parent.write_bytes(bom + parent.read_bytes())
    assert patch_file(models / CHILD).changed


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755])
def test_patched_file_and_backup_keep_the_permission_bits(models: Path, mode: int) -> None:
    path = models / "qwen2_untied.py"
    path.chmod(mode)
    result = patch_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert result.backup is not None and stat.S_IMODE(result.backup.stat().st_mode) == mode
    reverted = revert_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert stat.S_IMODE(reverted.backup.stat().st_mode) == mode


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_root_keeps_the_owner_and_group(models: Path) -> None:
    path = models / "qwen2_untied.py"
    os.chown(path, 12345, 23456)
    result = patch_file(path)
    for written in (path, result.backup):
        info = written.stat()
        assert (info.st_uid, info.st_gid) == (12345, 23456), written
    assert not [n for n in result.notes if "owned by" in n]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_an_owner_that_cannot_be_kept_is_reported(models: Path, monkeypatch) -> None:
    path = models / "qwen2_untied.py"
    os.chown(path, 12345, 23456)

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refuse)  # what a non-root user gets
    code, out, _ = run("patch", str(path))
    assert code == 0
    assert "note: " in out and "(was uid 12345, gid 23456)" in out


def test_hard_links_are_left_with_the_old_content_and_reported(models: Path) -> None:
    path = models / "qwen2_untied.py"
    original = path.read_bytes()
    other = models / "other_name.py"
    os.link(path, other)
    code, out, _ = run("patch", str(path))
    assert code == 0
    assert f"note: {path} had 1 other hard link; it is now a separate file" in out
    assert b"get_last_hidden" in path.read_bytes() and other.read_bytes() == original
    assert path.stat().st_nlink == 1
    code, out, _ = run("patch", str(path), "--revert")
    assert code == 0 and "hard link" not in out


def test_the_folder_is_fsynced_after_the_rename(models: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    patch_file(models / "qwen2_untied.py")
    # Backup, then the file: each written and fsynced, renamed, and its folder fsynced.
    assert events == ["fsync file", "replace", "fsync dir"] * 2


def test_files_too_large_for_a_model_are_refused(models: Path) -> None:
    from mlcpatch.patcher.source import MAX_SOURCE_BYTES

    path = models / "qwen2_untied.py"
    text = path.read_text()
    padding = "# padding\n" * (MAX_SOURCE_BYTES // 10 + 1)
    path.write_text(text + padding)
    before = path.read_bytes()
    for extra in ([], ["--check"], ["--diff"], ["--revert"]):
        code, _, err = run("patch", str(path), *extra)
        assert code == CANNOT_PATCH and "too large for a model definition" in err, (extra, err)
    assert path.read_bytes() == before
    assert not list(models.glob("*.mlcpatch-bak*"))


def test_work_grows_linearly_with_the_number_of_classes(models: Path, monkeypatch) -> None:
    """Every class's bases are looked up; each lookup must not rescan the whole module."""
    import mlcpatch.patcher.modules as modules

    count = 400
    path = models / "qwen2_untied.py"
    fillers = "".join(f"\n\nclass Filler{i}(Qwen2LikeModel):\n    pass\n" for i in range(count))
    path.write_text(path.read_text() + fillers)
    calls = 0
    real = modules._bound_names

    def counted(stmt):
        nonlocal calls
        calls += 1
        return real(stmt)

    monkeypatch.setattr(modules, "_bound_names", counted)
    result = patch_file(path)
    assert result.changed and check_file(path).code == PATCHED
    statements = len(ast.parse(path.read_text()).body)
    assert calls < 10 * statements  # one scan per parse, not one per class (count**2)


def test_source_segments_match_ast(models: Path) -> None:
    from mlcpatch.patcher.source import SourceFile

    text = (models / "qwen2_untied.py").read_text()
    text += 'x = {"caf\u00e9": (1,\n      "\u00fc")}  # non-ASCII columns\n'
    for variant in (text, text.replace("\n", "\r\n")):
        source = SourceFile.from_text(models / "x.py", variant)
        for node in ast.walk(source.tree):
            if isinstance(node, ast.expr | ast.stmt):
                assert source.segment(node) == ast.get_source_segment(variant, node)
