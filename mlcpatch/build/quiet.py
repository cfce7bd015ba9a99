"""Keeping TVM's own messages off the user's terminal while a build exports and compiles.

TVM talks while it works: its C++ code logs warnings straight to the process's stderr (file
descriptor 2; e.g. "Fast mode segfaults when there are out-of-bounds indices" from every
embedding lookup), and its Python code emits warnings. They are about TVM's internals, not about
the user's build, and no setting of TVM's turns them off. So for those steps the build points
descriptor 2 at a log file, which catches both (Python writes its warnings to ``sys.stderr``,
descriptor 2 in a terminal), and shows the log only when a step fails. ``mlcpatch build
--verbose`` leaves everything on the terminal.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import TextIO

from mlcpatch.errors import MlcpatchError


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a test runner or a pipe wrapper
        return False


@contextlib.contextmanager
def messages_to(log: pathlib.Path | None) -> Iterator[TextIO]:
    """For the block, whatever is written to descriptor 2 goes to ``log`` (written afresh);
    yields a stream to the real stderr for our own progress bars. If the block fails, the log
    is copied to stderr first, so that the failure is shown with everything TVM said before it:
    for a bug, or a user error with a ``detail`` (a compile error); a plain user error (a config
    that does not fit) is its own one line. ``log`` None: nothing is redirected (``--verbose``)."""
    if log is None:
        yield sys.stderr
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", errors="replace") if _stderr_is_fd2() else sys.stderr
    replay = False
    try:
        with open(log, "wb") as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield terminal
            except Exception as err:
                replay = not isinstance(err, MlcpatchError) or err.detail is not None
                raise
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        if terminal is not sys.stderr:
            terminal.close()
        if replay:
            with contextlib.suppress(OSError):  # never hide the failure itself
                said = log.read_text(errors="replace").rstrip("\n")
                if said:
                    sys.stderr.write(f"{said}\n")
                    sys.stderr.flush()
