"""Marked blocks: how inserted code is recognised, checked and removed again.

Every insertion is a run of whole lines between a begin and an end comment. The begin comment
carries a hash of the original file and of the block's own body, so that `--revert` can prove it
restores the original byte for byte and can tell when someone edited the file after patching.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mlcpatch.patcher.errors import PatchError
from mlcpatch.patcher.source import split_lines

TAG = "mlcpatch"
BEGIN_RE = re.compile(
    r"^[ \t]*# >>> mlcpatch:(?P<name>[a-z_]+) orig=(?P<orig>[0-9a-f]{16}) "
    r"body=(?P<body>[0-9a-f]{16})\b"
)
END_RE = re.compile(r"^[ \t]*# <<< mlcpatch:(?P<name>[a-z_]+)\b")
ANY_RE = re.compile(r"^[ \t]*# (>>>|<<<) mlcpatch:")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def make_block(name: str, indent: str, body: list[str], orig_hash: str, newline: str) -> list[str]:
    """Wrap body lines (without line endings) in begin/end markers, as lines with endings."""
    body_lines = [(line + newline) if line else newline for line in body]
    body_hash = short_hash("".join(body_lines))
    begin = (
        f"{indent}# >>> {TAG}:{name} orig={orig_hash} body={body_hash} "
        f"(undo: mlcpatch patch --revert){newline}"
    )
    end = f"{indent}# <<< {TAG}:{name}{newline}"
    return [begin, *body_lines, end]


@dataclass
class Block:
    name: str
    start: int  # index of the begin line
    end: int  # index of the end line
    orig: str
    body_hash: str
    body_ok: bool


def find_blocks(text: str) -> list[Block]:
    """All marked blocks; raises if markers are unbalanced or mangled."""
    lines = split_lines(text)
    blocks: list[Block] = []
    open_block: tuple[int, re.Match[str]] | None = None
    for index, line in enumerate(lines):
        if not ANY_RE.match(line):
            continue
        begin, end = BEGIN_RE.match(line), END_RE.match(line)
        if begin:
            if open_block is not None:
                raise PatchError(f"line {index + 1}: mlcpatch block opened inside another block")
            open_block = (index, begin)
        elif end:
            if open_block is None or open_block[1]["name"] != end["name"]:
                raise PatchError(f"line {index + 1}: mlcpatch end marker without its begin")
            start, match = open_block
            body = "".join(lines[start + 1 : index])
            blocks.append(
                Block(
                    match["name"],
                    start,
                    index,
                    match["orig"],
                    match["body"],
                    short_hash(body) == match["body"],
                )
            )
            open_block = None
        else:
            raise PatchError(f"line {index + 1}: damaged mlcpatch marker: {line.strip()[:60]}")
    if open_block is not None:
        raise PatchError(f"line {open_block[0] + 1}: mlcpatch block is never closed")
    return blocks


def strip_blocks(text: str, blocks: list[Block]) -> str:
    lines = split_lines(text)
    drop: set[int] = set()
    for block in blocks:
        drop.update(range(block.start, block.end + 1))
    return "".join(line for index, line in enumerate(lines) if index not in drop)
