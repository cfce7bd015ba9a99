"""Reading model files: text, lines with their original endings, and parsed trees."""

from __future__ import annotations

import ast
import gc
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlcpatch.patcher.errors import PatchError

_LINE_RE = re.compile(r"[^\n]*\n|[^\n]+$")
_LONE_CR_RE = re.compile(r"\r(?!\n)")
BOM = b"\xef\xbb\xbf"
# Model definitions are tens of KB. Parsing costs about 150 MB of memory per MB of source (the
# patched text is parsed and compiled too), so refuse what cannot be a model file.
MAX_SOURCE_BYTES = 2 * 1024 * 1024


def split_lines(text: str) -> list[str]:
    """Split keeping line endings, on '\\n' only (str.splitlines also splits on form feeds and
    other characters that Python's tokenizer does not count, which would shift line numbers)."""
    return _LINE_RE.findall(text)


def newline_of(text: str) -> str:
    return "\r\n" if "\r\n" in text.split("\n", 1)[0] + "\n" else "\n"


def read_source(path: Path) -> bytes:
    """The file's bytes; refuses files too large to be a model definition."""
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise PatchError(
            f"{path}: too large for a model definition ({size / 2**20:.1f} MiB; "
            f"the limit is {MAX_SOURCE_BYTES // 2**20} MiB)"
        )
    return path.read_bytes()


def decode_source(data: bytes, path: Path) -> str:
    """The text of a UTF-8 file, without its byte-order mark if it has one (Python accepts it;
    callers that write the file back re-add it)."""
    if b"\x00" in data:
        raise PatchError(f"{path}: not Python source (binary data)")
    body = data[len(BOM) :] if data.startswith(BOM) else data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        offset = err.start + len(data) - len(body)
        raise PatchError(f"{path}: not Python source (not UTF-8 at byte {offset})") from None
    lone = _LONE_CR_RE.search(text)
    if lone is not None:
        # Python counts a lone \r as a line break, so line numbers would not match our lines.
        lineno = len(re.findall(r"\r\n|\r|\n", text[: lone.start()])) + 1
        raise PatchError(
            f"{path}:{lineno}: line ends with a lone carriage return (old Mac line endings); "
            "convert the file to \\n or \\r\\n line endings first"
        )
    return text


@contextmanager
def gc_paused() -> Iterator[None]:
    """Parsing creates millions of objects, and with the first file's tree alive each of the
    collector's full passes walks it all again (the second parse of a 5 MB file took 4x the
    first). Tree nodes hold no reference cycles, so collection can wait until after."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_source(text: str, path: Path) -> ast.Module:
    try:
        with gc_paused():
            return ast.parse(text, filename=str(path))
    except SyntaxError as err:
        raise PatchError(f"{path}:{err.lineno}: syntax error: {err.msg}") from None
    except ValueError as err:  # e.g. null bytes
        raise PatchError(f"{path}: not Python source ({err})") from None


@dataclass
class SourceFile:
    """One parsed Python file. Line numbers are 1-based, as in `ast`."""

    path: Path
    text: str
    tree: ast.Module
    lines: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.lines = split_lines(self.text)

    @classmethod
    def read(cls, path: Path) -> SourceFile:
        text = decode_source(read_source(path), path)
        return cls(path, text, parse_source(text, path))

    @classmethod
    def from_text(cls, path: Path, text: str) -> SourceFile:
        return cls(path, text, parse_source(text, path))

    def line_prefix(self, lineno: int, col: int) -> str:
        """Text of line `lineno` before the UTF-8 byte column `col` (ast counts bytes)."""
        return self.lines[lineno - 1].encode("utf-8")[:col].decode("utf-8", errors="replace")

    def line_suffix(self, lineno: int, col: int) -> str:
        return self.lines[lineno - 1].encode("utf-8")[col:].decode("utf-8", errors="replace")

    def segment(self, node: ast.AST) -> str:
        """Like ast.get_source_segment, from the lines split once (it re-splits the whole file on
        every call, which made large files quadratic)."""
        lineno, end = getattr(node, "lineno", None), getattr(node, "end_lineno", None)
        col, end_col = getattr(node, "col_offset", None), getattr(node, "end_col_offset", None)
        if lineno is None or end is None or col is None or end_col is None:  # pragma: no cover
            raise PatchError(f"{self.path}: cannot locate source of {ast.dump(node)[:60]}")
        if lineno == end:
            return self.lines[lineno - 1].encode("utf-8")[col:end_col].decode("utf-8")
        first = self.line_suffix(lineno, col)
        last = self.lines[end - 1].encode("utf-8")[:end_col].decode("utf-8")
        return "".join([first, *self.lines[lineno : end - 1], last])

    def stmt_lines(self, node: ast.stmt) -> list[str]:
        """Whole source lines of a statement, decorators included; refuses statements that share
        a line with other code, since copying whole lines would duplicate that code."""
        first = node.lineno
        decorators = getattr(node, "decorator_list", None)
        if decorators:
            first = min(first, *(d.lineno for d in decorators))
        start_col = node.col_offset if first == node.lineno else decorators[0].col_offset - 1
        if self.line_prefix(first, max(start_col, 0)).strip():
            raise PatchError(
                f"{self.path}:{node.lineno}: statement shares its line with other code; "
                "cannot copy it line by line"
            )
        end = node.end_lineno or node.lineno
        rest = self.line_suffix(end, node.end_col_offset or 0).strip()
        if rest and not rest.startswith("#"):
            raise PatchError(
                f"{self.path}:{end}: statement shares its line with other code; "
                "cannot copy it line by line"
            )
        return self.lines[first - 1 : end]

    def indent_of(self, lineno: int) -> str:
        line = self.lines[lineno - 1]
        return line[: len(line) - len(line.lstrip(" \t"))]
