"""Tokens come from the environment only, and never reach output, logs, reprs or error messages."""

from __future__ import annotations

import os

from mlcpatch.publish.errors import PublishError

REDACTED = "***"


class Secret:
    """A token that prints as *** (repr, str, f-strings, tracebacks of locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def token_from_env(variable: str, *, required: bool) -> Secret | None:
    value = os.environ.get(variable, "").strip()
    if value:
        return Secret(value)
    if required:
        raise PublishError(f"{variable} is not set: export a token with write access")
    return None


def scrub(text: str, *secrets: Secret | None) -> str:
    """``text`` with every token value replaced; last line of defence for third-party messages."""
    for secret in secrets:
        if secret is not None and secret.reveal():
            text = text.replace(secret.reveal(), REDACTED)
    return text
