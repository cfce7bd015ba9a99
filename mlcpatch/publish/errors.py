"""Errors the publish command turns into one-line messages."""

from __future__ import annotations

import click


class PublishError(click.ClickException):
    """Publishing cannot go on; the message is one line for the user (never holds a token)."""


class ArtifactError(PublishError):
    """The artifact folder or a link file does not match what it claims to be."""


class AuthError(PublishError):
    """The service refused the token (HTTP 401/403)."""


class VerifyError(PublishError):
    """What the service stored differs from what was sent."""


class TransientError(Exception):
    """A failure worth retrying (HTTP 5xx/429, dropped connection, timeout)."""
