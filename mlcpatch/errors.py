"""The one base of every error a user can cause (bad input, missing files, refused settings).

The CLI prints a ``MlcpatchError`` as one line, ``Error: <message>`` on stderr, and exits with
status 2 (``Group`` below, the class of every command group); any other exception is a bug in
mlcpatch and keeps its traceback. click's own usage errors keep click's handling (also status 2).
"""

from __future__ import annotations

from typing import IO, Any

import click

USER_ERROR_EXIT = 2


class MlcpatchError(Exception):
    """Something the user can fix; the message says what and how.

    ``detail``: longer output behind the message (the last lines of a compiler's log), printed
    before the one-line message."""

    def __init__(self, *args: Any, detail: str | None = None) -> None:
        super().__init__(*args)
        self.detail = detail


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class _Reported(click.ClickException):
    exit_code = USER_ERROR_EXIT

    def __init__(self, err: MlcpatchError) -> None:
        super().__init__(one_line(err))
        self.detail = err.detail

    def show(self, file: IO[Any] | None = None) -> None:
        if self.detail:
            click.echo(self.detail.rstrip("\n"), file=file, err=file is None)
        super().show(file)


class Group(click.Group):
    """A command group that reports MlcpatchError from any of its commands as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MlcpatchError as err:
            raise _Reported(err) from err
