"""Running the ``mlc_llm`` commands: output streamed as it comes, failures named with their last
lines, and SIGTERM turned into an exit so a killed build still cleans up."""

from __future__ import annotations

import codecs
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlcpatch.build.mlc.errors import MlcStepError

TAIL_BYTES = 16384  # how much of a step's output is kept for its error message
TAIL_LINES = 3


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so a terminated build still runs its cleanup
    (kills the running mlc_llm, reverts the patch, removes the staging folder)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _tail(data: bytes) -> str:
    """The last lines of a step's output; after a Python (or TVM) traceback, the error itself:
    the lines from the first unindented one after the last "Traceback" line."""
    text = data.decode("utf-8", errors="replace")
    raw = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    marks = [i for i, line in enumerate(raw) if "Traceback (most recent call last)" in line]
    if marks:
        after = raw[marks[-1] + 1 :]
        start = next((i for i, line in enumerate(after) if not line[:1].isspace()), None)
        if start is not None:
            raw = after[start:]
    lines = [line.strip() for line in raw]
    tail = " | ".join(lines[-TAIL_LINES:] if not marks else lines[:TAIL_LINES]) or "no output"
    return tail if len(tail) <= 600 else "..." + tail[-597:]


def run_step(argv: list[str], *, echo: bool) -> None:
    """Run one mlc_llm command, streaming its output to stderr as it comes (progress bars too);
    on failure raise MlcStepError naming the command and quoting its last lines."""
    name = " ".join(argv[:2]) if argv[1:2] == ["-m"] else Path(argv[0]).name
    step = next((a for a in argv[1:] if a in ("convert_weight", "gen_config", "compile")), "")
    label = f"mlc_llm {step}".strip()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0
        )
    except OSError as exc:
        raise MlcStepError(f"{label}: cannot run {name}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = bytearray()
    try:
        while chunk := proc.stdout.read(65536):
            tail += chunk
            del tail[:-TAIL_BYTES]
            if echo:
                sys.stderr.write(decoder.decode(chunk))
                sys.stderr.flush()
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        raise MlcStepError(
            f"{label} failed (exit code {code}): {shlex.join(argv)}; last output: {_tail(tail)}"
        )
