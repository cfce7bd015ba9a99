"""Patch, check, revert and diff one model file."""

from __future__ import annotations

import ast
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlcpatch.patcher.analyze import ModelAnalysis, analyze, patched_problems
from mlcpatch.patcher.errors import PatchError
from mlcpatch.patcher.files import atomic_write, check_target, write_backup
from mlcpatch.patcher.generate import apply_insertions, build_insertions
from mlcpatch.patcher.markers import find_blocks, short_hash, strip_blocks
from mlcpatch.patcher.modules import ClassRef, ModuleGraph
from mlcpatch.patcher.source import (
    BOM,
    SourceFile,
    decode_source,
    gc_paused,
    parse_source,
    read_source,
)

# Exit codes of `--check`, as the CLI promises them.
PATCHED, NOT_PATCHED, CANNOT_PATCH = 0, 1, 2

Verifier = Callable[[Path, str, str], list[str]]  # (path, patched text, class) -> exported names


@dataclass
class PatchResult:
    path: Path
    action: str  # "patched", "already patched", "reverted", "not patched"
    changed: bool
    class_name: str = ""
    mode: str = ""  # "copy" (statements copied from prefill/decode) or "delegate"
    before: str = ""
    after: str = ""
    backup: Path | None = None
    notes: list[str] = field(default_factory=list)

    def diff(self) -> str:
        return unified_diff(self.before, self.after, self.path)


@dataclass
class CheckResult:
    code: int
    message: str


def unified_diff(before: str, after: str, path: Path) -> str:
    return "".join(
        difflib.unified_diff(
            before.splitlines(keepends=True),
            after.splitlines(keepends=True),
            fromfile=f"a/{path.name}",
            tofile=f"b/{path.name}",
        )
    )


def _read(path: Path) -> tuple[bytes, str, bytes]:
    """The file's bytes, its text, and the byte-order mark to write back before the text."""
    data = read_source(path)
    return data, decode_source(data, path), BOM if data.startswith(BOM) else b""


def _original_of(text: str, path: Path, *, force: bool) -> tuple[str, bool]:
    """The unpatched text and whether any blocks were found; refuses edited patches."""
    try:
        blocks = find_blocks(text)
    except PatchError as err:
        raise PatchError(f"{path}:{err}") from None
    if not blocks:
        return text, False
    original = strip_blocks(text, blocks)
    if not force:
        for block in blocks:
            if not block.body_ok:
                raise PatchError(
                    f"{path}:{block.start + 1}: the mlcpatch:{block.name} block was edited since "
                    "patching; use --force to remove it anyway"
                )
        if any(b.orig != short_hash(original) for b in blocks):
            raise PatchError(
                f"{path}: the file was edited since patching, so removing the patch would not "
                "restore the original; use --force to remove the marked blocks anyway"
            )
    return original, True


def plan(path: Path, text: str, class_name: str | None = None) -> tuple[str, ModelAnalysis]:
    """Patched text for unpatched `text` (not written anywhere)."""
    with gc_paused():  # see gc_paused: the trees are large and hold no cycles
        source = SourceFile.from_text(path, text)
        analysis = analyze(ModuleGraph(source), class_name)
        patched = apply_insertions(text, build_insertions(analysis, text))
        verify_text(path, patched, analysis.target.node.name)
    return patched, analysis


def verify_text(path: Path, text: str, class_name: str) -> None:
    """The patched file compiles and its class has both methods, both spec entries, and
    signatures that mirror prefill/decode."""
    try:  # parse once; compiling the tree adds the checks that only the compiler makes
        with gc_paused():
            tree = ast.parse(text, filename=str(path))
            compile(tree, str(path), "exec")
    except SyntaxError as err:  # a bug in the generator, never the user's fault
        raise PatchError(f"{path}: internal error: patched code does not compile: {err}") from None
    source = SourceFile(path, text, tree)
    graph = ModuleGraph(source)
    node = next(n for n in source.tree.body if getattr(n, "name", None) == class_name)
    problems = patched_problems(graph, ClassRef(source, node))
    if problems:
        raise PatchError(f"{path}: internal error: patch incomplete: {'; '.join(problems)}")


def patch_file(
    path: Path,
    *,
    class_name: str | None = None,
    dry_run: bool = False,
    verifier: Verifier | None = None,
) -> PatchResult:
    """Add get_last_hidden/decode_last_hidden to the model in `path` (idempotent)."""
    path = Path(path)
    check_target(path, write=not dry_run)
    data, text, bom = _read(path)
    original, has_blocks = _original_of(text, path, force=False)
    patched, analysis = plan(path, original, class_name)
    name = analysis.target.node.name
    mode = "delegate" if analysis.delegate else "copy"
    if has_blocks:
        notes = [] if patched == text else ["patched by a different mlcpatch version"]
        return PatchResult(path, "already patched", False, name, mode, text, text, notes=notes)
    notes: list[str] = []
    if verifier is not None:
        exported = verifier(path, patched, name)
        notes.append("exported functions: " + ", ".join(exported))
    result = PatchResult(path, "patched", True, name, mode, text, patched, notes=notes)
    if not dry_run:
        result.backup = write_backup(path, data)
        result.notes += atomic_write(path, bom + patched.encode("utf-8"))
    return result


def revert_file(path: Path, *, force: bool = False, dry_run: bool = False) -> PatchResult:
    """Remove the patch, restoring the original byte for byte."""
    path = Path(path)
    check_target(path, write=not dry_run)
    data, text, bom = _read(path)
    parse_source(text, path)  # refuse files that are not Python at all
    original, has_blocks = _original_of(text, path, force=force)
    if not has_blocks:
        return PatchResult(path, "not patched", False, before=text, after=text)
    result = PatchResult(path, "reverted", True, before=text, after=original)
    if not dry_run:
        result.backup = write_backup(path, data)
        result.notes += atomic_write(path, bom + original.encode("utf-8"))
    return result


def check_file(path: Path, *, class_name: str | None = None) -> CheckResult:
    """0: patched, 1: not patched (but patchable), 2: cannot be patched; with the reason."""
    path = Path(path)
    try:
        check_target(path, write=False)
        _, text, _ = _read(path)
        original, has_blocks = _original_of(text, path, force=False)
        patched, analysis = plan(path, original, class_name)
    except PatchError as err:
        return CheckResult(CANNOT_PATCH, f"cannot be patched: {err}")
    except OSError as err:
        return CheckResult(CANNOT_PATCH, f"cannot be patched: {err.filename}: {err.strerror}")
    name = analysis.target.node.name
    if has_blocks:
        return CheckResult(
            PATCHED,
            f"{path}: patched ({name} has get_last_hidden, "
            "decode_last_hidden and their spec entries)",
        )
    how = "delegating to *_to_last_hidden_states" if analysis.delegate else "from prefill/decode"
    return CheckResult(NOT_PATCHED, f"{path}: not patched ({name} can be patched, {how})")
