"""Reading model files: text, lines with their original endings, and parsed trees."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlcpatch.patcher.errors import PatchError

_LINE_RE = re.compile(r"[^\n]*\n|[^\n]+$")


def split_lines(text: str) -> list[str]:
    """Split keeping line endings, on '\\n' only (str.splitlines also splits on form feeds and
    other characters that Python's tokenizer does not count, which would shift line numbers)."""
    return _LINE_RE.findall(text)


def newline_of(text: str) -> str:
    return "\r\n" if "\r\n" in text.split("\n", 1)[0] + "\n" else "\n"


def decode_source(data: bytes, path: Path) -> str:
    if b"\x00" in data:
        raise PatchError(f"{path}: not Python source (binary data)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PatchError(f"{path}: not Python source (not UTF-8 at byte {err.start})") from None


def parse_source(text: str, path: Path) -> ast.Module:
    try:
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
        text = decode_source(path.read_bytes(), path)
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
        text = ast.get_source_segment(self.text, node)
        if text is None:  # pragma: no cover - only for nodes without positions
            raise PatchError(f"{self.path}: cannot locate source of {ast.dump(node)[:60]}")
        return text

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
