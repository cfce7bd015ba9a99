"""Quiet builds: TVM's own messages (C++ logging on descriptor 2, Python warnings) go to the build
log unless `mlcpatch build --verbose`; a failing step shows them, and a compile error in full."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from mlcpatch.build.quiet import messages_to
from mlcpatch.errors import MlcpatchError

TVM_WARNING = "Fast mode segfaults when there are out-of-bounds indices"


def test_descriptor_2_goes_to_the_log_and_comes_back(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "logs" / "x.log"
    with messages_to(log) as terminal:
        os.write(2, b"from C++\n")
        terminal.write("progress\n")
        terminal.flush()
    os.write(2, b"after\n")
    assert log.read_text() == "from C++\n"
    err = capfd.readouterr().err
    assert "from C++" not in err and "after" in err
    assert "progress" in err  # capfd's sys.stderr is not descriptor 2: bars stay on it


def test_a_failing_block_replays_the_log(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "x.log"
    with pytest.raises(KeyError), messages_to(log):
        os.write(2, b"what TVM said first\n")
        raise KeyError("boom")
    assert "what TVM said first" in capfd.readouterr().err
    with pytest.raises(MlcpatchError), messages_to(log):
        os.write(2, b"unrelated to a config error\n")
        raise MlcpatchError("config.json does not fit")  # its own one line says it all
    assert "unrelated" not in capfd.readouterr().err
    with messages_to(None) as terminal:  # --verbose: nothing moves
        os.write(2, b"straight through\n")
    assert terminal is sys.stderr and "straight through" in capfd.readouterr().err


def test_python_warnings_on_a_terminal_stderr_go_to_the_log(tmp_path: pathlib.Path) -> None:
    """In a real process sys.stderr is descriptor 2, so Python's warnings land in the log too."""
    code = (
        "import pathlib, sys, warnings\n"
        "from mlcpatch.build.quiet import messages_to\n"
        f"with messages_to(pathlib.Path({str(tmp_path / 'w.log')!r})) as terminal:\n"
        "    warnings.warn('a TVM python warning')\n"
        "    terminal.write('bar\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "bar\n"
    assert "UserWarning: a TVM python warning" in (tmp_path / "w.log").read_text()


def _mlcpatch(args: list[str], cache: pathlib.Path) -> subprocess.CompletedProcess[str]:
    exe = pathlib.Path(sys.executable).with_name("mlcpatch")
    env = {**os.environ, "MLCPATCH_CACHE_DIR": str(cache)}
    return subprocess.run(
        [str(exe), *args], capture_output=True, text=True, env=env, timeout=900, check=False
    )


@pytest.mark.heavy
def test_a_cpu_build_is_quiet_unless_verbose(tmp_path: pathlib.Path) -> None:
    cache = tmp_path / "cache"
    args = ["build", "--arch", "qwen2", "--model", "tiny-random", "--target", "llvm"]
    done = _mlcpatch([*args, "--out", str(tmp_path / "q"), "--quiet"], cache)
    assert done.returncode == 0, done.stderr
    # (a fresh cache writes the tiny model first: transformers' own bar may show, no warning)
    assert TVM_WARNING not in done.stderr and "Warning" not in done.stderr, done.stderr
    assert TVM_WARNING in (cache / "logs" / "q.log").read_text()
    # --no-cache: a cached compile step would run no TVM at all
    verbose = [*args, "--out", str(tmp_path / "q"), "-q", "--overwrite", "--no-cache", "--verbose"]
    loud = _mlcpatch(verbose, cache)
    assert loud.returncode == 0, loud.stderr
    assert TVM_WARNING in loud.stderr


@pytest.mark.heavy
def test_a_compile_error_is_shown_in_full(tmp_path: pathlib.Path) -> None:
    """TVM's whole error message and what it logged before it, then the one-line error."""
    script = f"""
import os, sys
import tvm
import mlcpatch.build.pipeline as pipeline
from mlcpatch.cli import main

def failing_compile(model, spec, lib_path, on_step):
    os.write(2, b"[12:00:00] some/file.cc:1: Warning: logged by TVM before failing\\n")
    raise tvm.error.InternalError(
        "Traceback (most recent call last):\\n  0: tvm::tirx::Something\\n"
        "File some/pass.cc, line 9\\nInternalError: Check failed: (x) is false: first\\n"
        "  and a second line of the check"
    )

pipeline.compile_library = failing_compile
sys.argv = ["mlcpatch", "build", "--arch", "qwen2", "--model", "tiny-random",
            "--target", "llvm", "--out", {str(tmp_path / "bad")!r}, "--quiet"]
main()
"""
    env = {**os.environ, "MLCPATCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "Warning: logged by TVM before failing" in done.stderr
    assert "0: tvm::tirx::Something" in done.stderr
    assert "and a second line of the check" in done.stderr
    assert lines[-1].startswith("Error: TVM failed compiling the llvm library (head_dim ")
    assert sum(line.startswith("Error:") for line in lines) == 1
    assert "Traceback" not in lines[-1] and not (tmp_path / "bad").exists()
