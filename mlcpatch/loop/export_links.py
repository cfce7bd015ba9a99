"""Writing the closed-form links to a link file, for the browser playground (or to keep them).

The browser cannot fit links itself, so the Python side fits them on the models, exactly as
`mlcpatch run` does without `--links` (`calibrate.closed_form_link_file`), and writes them in
the trainer's formats. A run that loads the file then uses the very links the in-memory run
would have used (float32 round-trips exactly). `mlcpatch run --save-links DIR` does the same.

    python -m mlcpatch.loop.export_links --model A [--model B ...] --pattern P --out DIR
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import click

from mlcpatch.loop.calibrate import closed_form_link_file
from mlcpatch.loop.linkfile import links_from_file
from mlcpatch.loop.orchestrator import Agent, Links
from mlcpatch.loop.patterns import Pattern
from mlcpatch.training.link_io import save_links
from mlcpatch.training.linkfile import LinkFileError


def save_fitted_links(
    pattern: Pattern, agents: list[Agent], path: str | pathlib.Path, variant: str = "residual"
) -> tuple[pathlib.Path, Links]:
    """Fit the closed-form links, write them to `path` (a folder or links.json: links.json +
    links.safetensors; a .safetensors; a recursivelink .json) and return them ready to run."""
    link_file = closed_form_link_file(pattern, agents, variant)
    written = save_links(link_file, pathlib.Path(path))
    return written, links_from_file(link_file, pattern, agents, str(written))


def main(argv: list[str] | None = None) -> int:
    from mlcpatch.loop.command import _agents

    parser = argparse.ArgumentParser(
        prog="python -m mlcpatch.loop.export_links",
        description="Write the closed-form links for a pattern and its models to a link file.",
    )
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        required=True,
        help="Artifact or Hugging Face folder; once for all agents or once per agent.",
    )
    parser.add_argument("--pattern", default="sequential")
    parser.add_argument(
        "--out",
        required=True,
        type=pathlib.Path,
        help="A folder (links.json + links.safetensors), a .safetensors or a .json file.",
    )
    args = parser.parse_args(argv)
    try:
        pattern, agents = _agents(args.pattern, tuple(args.models))
        written, _ = save_fitted_links(pattern, agents, args.out)
    except (click.ClickException, LinkFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
