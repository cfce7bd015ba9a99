"""What a publish does to one destination, file by file; printed the same way for --dry-run."""

from __future__ import annotations

import dataclasses
from typing import Literal

from mlcpatch.publish.payload import Payload

Action = Literal["new", "changed", "unchanged"]
_VERB = {"new": "upload", "changed": "replace", "unchanged": "skip"}


@dataclasses.dataclass(frozen=True)
class Step:
    payload: Payload
    action: Action


@dataclasses.dataclass
class Plan:
    destination: str  # e.g. "Hugging Face org/name (https://huggingface.co, main)"
    note: str  # e.g. "repo exists" / "repo will be created"
    steps: list[Step]

    @property
    def to_send(self) -> list[Step]:
        return [s for s in self.steps if s.action != "unchanged"]

    def lines(self, *, dry_run: bool) -> list[str]:
        send = self.to_send
        size = sum(s.payload.size for s in send)
        head = "would upload" if dry_run else "uploading"
        out = [
            f"{self.destination}: {self.note}; {head} {len(send)} of {len(self.steps)} files "
            f"({size} bytes)"
        ]
        for step in self.steps:
            p = step.payload
            out.append(f"  {_VERB[step.action]:<8} {p.name}  {p.size} bytes  sha256:{p.sha256}")
        return out


def classify(payload: Payload, remote_matches: bool | None) -> Step:
    """``remote_matches``: None when the destination has no file of that name."""
    if remote_matches is None:
        return Step(payload, "new")
    return Step(payload, "unchanged" if remote_matches else "changed")
