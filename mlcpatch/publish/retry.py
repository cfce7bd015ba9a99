"""Retrying idempotent steps with exponential backoff.

Every step retried here re-reads the remote state before writing, so running it twice never uploads
or commits twice (a lost response to a commit is harmless: the retry sees the files are there).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5  # attempts after the first
    first_wait: float = 1.0  # seconds; doubles after each failure
    max_wait: float = 30.0
    timeout: float = 60.0  # per network operation (connect, each read, each write)

    def wait(self, failures: int) -> float:
        return min(self.max_wait, self.first_wait * (2 ** (failures - 1)))


def with_retries(
    step: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    notify: Callable[[str], None],
) -> T:
    failures = 0
    while True:
        try:
            return step()
        except Exception as exc:
            if not is_transient(exc) or failures >= policy.retries:
                raise
            failures += 1
            wait = policy.wait(failures)
            notify(
                f"{what}: {short_reason(exc)}; retry {failures} of {policy.retries} in {wait:g}s"
            )
            time.sleep(wait)


def short_reason(exc: BaseException) -> str:
    """The exception's first line (library messages run to several lines of advice)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps: libraries re-raise transport errors inside their own."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain
