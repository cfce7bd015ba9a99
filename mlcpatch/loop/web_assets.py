"""The playground's copies of the loop's data: built-in patterns and the search tool's notes.

`mlcpatch serve` serves static files only, and the browser cannot read TOML, so the pattern
files and documents.json are exported as JSON under web/data/. The Python files stay the
source of truth: `python -m mlcpatch.loop.web_assets` rewrites the copies, `--check` fails when
they are stale (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from dataclasses import asdict

from mlcpatch.loop.patterns import builtin_patterns, load_pattern
from mlcpatch.loop.tools import load_documents
from mlcpatch.resources import web_dir

WEB_DATA = web_dir() / "data"
FORMAT = 1


def patterns_json() -> dict:
    patterns = []
    for name in builtin_patterns():
        pattern = load_pattern(name)
        patterns.append(
            {
                "name": pattern.name,
                "description": pattern.description,
                "agents": [
                    {**asdict(a), "receives": list(a.receives), "tools": list(a.tools)}
                    for a in pattern.agents
                ],
            }
        )
    return {"format": FORMAT, "patterns": patterns}


def documents_json() -> list[dict]:
    return [{"title": d.title, "text": d.text} for d in load_documents()]


def _dump(data: object) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def assets() -> dict[str, str]:
    """File name -> exact text to write (stable: sorted patterns, fixed indentation)."""
    return {"patterns.json": _dump(patterns_json()), "documents.json": _dump(documents_json())}


def stale(folder: pathlib.Path = WEB_DATA) -> list[str]:
    return [
        name
        for name, text in assets().items()
        if not (folder / name).is_file() or (folder / name).read_text("utf-8") != text
    ]


def write(folder: pathlib.Path = WEB_DATA) -> list[pathlib.Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in assets().items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text, "utf-8")
        tmp.replace(folder / name)
        written.append(folder / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=WEB_DATA)
    parser.add_argument("--check", action="store_true", help="Only report stale files.")
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        for name in names:
            print(f"{args.out / name} is stale: run python -m mlcpatch.loop.web_assets")
        return 1 if names else 0
    for path in write(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
