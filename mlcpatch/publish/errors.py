"""Errors the publish command reports as one line (mlcpatch.errors: the CLI's rule)."""

from __future__ import annotations

from mlcpatch.artifact import ArtifactError
from mlcpatch.errors import MlcpatchError

__all__ = ["ArtifactError", "AuthError", "PublishError", "TransientError", "VerifyError"]


class PublishError(MlcpatchError):
    """Publishing cannot go on; the message is one line for the user (never holds a token).

    ``message`` may be rewritten (the command scrubs tokens out of server answers) and is what
    the error prints."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class AuthError(PublishError):
    """The service refused the token (HTTP 401/403)."""


class VerifyError(PublishError):
    """What the service stored differs from what was sent."""


class TransientError(Exception):
    """A failure worth retrying (HTTP 5xx/429, dropped connection, timeout).

    Not a user error: the retry loop consumes it, and what outlasts the retries is turned into
    a PublishError (github.wrap_errors) before it reaches the user."""
