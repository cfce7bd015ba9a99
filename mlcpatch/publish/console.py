"""Where publish talks to the user: progress on stdout, retries on stderr, tokens scrubbed."""

from __future__ import annotations

import dataclasses

import click

from mlcpatch.publish.tokens import Secret, scrub


@dataclasses.dataclass(frozen=True)
class Console:
    secrets: tuple[Secret | None, ...] = ()

    def say(self, message: str) -> None:
        click.echo(scrub(message, *self.secrets))

    def warn(self, message: str) -> None:
        click.echo(scrub(message, *self.secrets), err=True)
