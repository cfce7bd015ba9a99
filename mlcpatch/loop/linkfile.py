"""Link files (the trainer's formats) turned into the callables the loop runs, checked against
the pattern and the models they are paired with."""

from __future__ import annotations

from pathlib import Path

from mlcpatch.loop.links import Link
from mlcpatch.loop.orchestrator import Agent, Links
from mlcpatch.loop.patterns import Pattern
from mlcpatch.training.linkfile import LinkFile, LinkFileError


def links_from_file(
    link_file: LinkFile, pattern: Pattern, agents: list[Agent], source: str
) -> Links:
    link_file.check_models({a.role.name: a.backend.hidden_size for a in agents}, source)

    def make(kind: str, src: str, dst: str) -> Link:
        for spec in link_file.links:
            if (spec.kind, spec.source, spec.target) == (kind, src, dst):
                params = link_file.params(spec.name)
                return Link(spec.name, kind, src, dst, spec.variant, params, spec.activation)
        what = f"inner link for agent {src!r}" if kind == "inner" else f"outer link {src}->{dst}"
        raise LinkFileError(f"{source}: no {what} (pattern {pattern.name})")

    inner = {a.role.name: make("inner", a.role.name, a.role.name) for a in agents}
    outer = {(s, r): make("outer", s, r) for s, r in pattern.handoffs()}
    return Links(inner, outer)


def load_links(path: str | Path, pattern: Pattern, agents: list[Agent]) -> Links:
    from mlcpatch.training.link_io import load_links as read

    return links_from_file(read(Path(path)), pattern, agents, str(path))
