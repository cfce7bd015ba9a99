"""Writing the closed-form links to a link file, for the browser playground (or to keep them).

The browser cannot fit links itself, so the Python side fits them on the models, exactly as
`mlcpatch run` does without `--links` (`calibrate.closed_form_link_file`), and writes them in
the trainer's formats. A run that loads the file then uses the very links the in-memory run
would have used (float32 round-trips exactly): `mlcpatch run --save-links DIR` does it.
"""

from __future__ import annotations

import pathlib

from mlcpatch.links.files import save_links
from mlcpatch.loop.calibrate import closed_form_link_file
from mlcpatch.loop.orchestrator import Agent, Links
from mlcpatch.loop.patterns import Pattern


def save_fitted_links(
    pattern: Pattern, agents: list[Agent], path: str | pathlib.Path, variant: str = "residual"
) -> tuple[pathlib.Path, Links]:
    """Fit the closed-form links, write them to `path` (a folder or links.json: links.json +
    links.safetensors; a .safetensors; a recursivelink .json) and return them ready to run."""
    link_file = closed_form_link_file(pattern, agents, variant)
    written = save_links(link_file, pathlib.Path(path))
    return written, Links.from_file(link_file, pattern, agents, str(written))
