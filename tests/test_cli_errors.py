"""The CLI's error rule (mlcpatch/errors.py): a user error (MlcpatchError) from any command is one
line, `Error: <message>`, on stderr and exit status 2; anything else is a bug and keeps its
traceback."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from mlcpatch.cli import main


def _user_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, env={"HF_TOKEN": None, "GITHUB_TOKEN": None})
    assert result.exit_code == 2, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    # serve may warn about the page first; the error itself is one line
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def _free_port_in_use() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, sock.getsockname()[1]


def test_build(tmp_path: pathlib.Path) -> None:
    line = _user_error(
        ["build", "--arch", "gpt9", "--model", "tiny-random", "--out", str(tmp_path)]
    )
    assert line.startswith("Error: unknown architecture 'gpt9' (known: ")


def test_patch(tmp_path: pathlib.Path) -> None:
    source = tmp_path / "plain_model.py"
    source.write_text("class Plain:\n    pass\n")
    line = _user_error(["patch", str(source)])
    assert str(source) in line
    assert source.read_text() == "class Plain:\n    pass\n"


def test_run_and_eval(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "no-model"
    line = _user_error(["run", "--model", str(missing), "What is 6*7?"])
    assert line == f"Error: {missing}: no such model folder"
    line = _user_error(["run", "--model", str(missing), "--rounds", "0", "q"])
    assert line == "Error: rounds must be at least 1"
    questions = tmp_path / "none.jsonl"
    line = _user_error(["eval", "--model", str(missing), "--questions", str(questions)])
    assert str(questions) in line


def test_train_and_links(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "run.toml"
    line = _user_error(["train", "--config", str(config)])
    assert line.startswith(f"Error: {config}: cannot read")
    bad = tmp_path / "links.json"
    bad.write_text('{"format": 1, "agents": "none", "links": []}')
    assert str(tmp_path) in _user_error(["links", "inspect", str(bad)])


def test_publish(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "gone"
    line = _user_error(["publish", str(folder), "--hf-repo", "org/tiny", "--dry-run"])
    assert line.startswith(f"Error: {folder}: no such artifact folder")


def test_serve(tmp_path: pathlib.Path) -> None:
    sock, port = _free_port_in_use()
    with sock:
        args = ["serve", "--artifacts", str(tmp_path), "--port", str(port), "--quiet"]
        line = _user_error(args)
    assert line.startswith(f"Error: cannot listen on 127.0.0.1:{port}: ")


def _boom(*args: object, **kwargs: object) -> None:
    raise KeyError("boom")


@pytest.mark.parametrize(
    ("target", "args"),
    [
        ("mlcpatch.models.registry.get_arch", ["build", "--arch", "qwen2", "--model", "x"]),
        ("mlcpatch.loop.command.open_backend", ["run", "--model", "m", "q"]),
        ("mlcpatch.publish.command.validate_artifact", ["publish", "a", "--hf-repo", "o/r"]),
        ("mlcpatch.training.config.read_config_file", ["train", "--config", "c.toml"]),
    ],
)
def test_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, target: str, args: list[str]
) -> None:
    monkeypatch.setattr(target, _boom)
    result: Result = CliRunner().invoke(main, args)
    assert isinstance(result.exception, KeyError), repr(result.exception)
    assert result.exit_code != 0 and "\nError:" not in f"\n{result.output}"
    assert result.exc_info is not None and result.exc_info[2] is not None


def _mlcpatch(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("setup", "check"),
    [
        (
            "",
            lambda done: (
                done.returncode == 2
                and done.stderr.splitlines() == [done.stderr.strip()]
                and done.stderr.startswith("Error: unknown architecture 'gpt9'")
            ),
        ),
        (
            "import mlcpatch.models.registry as r\n"
            "def boom(*a):\n    raise KeyError('boom')\n"
            "r.get_arch = boom\n",
            lambda done: (
                done.returncode == 1
                and "Traceback (most recent call last)" in done.stderr
                and done.stderr.strip().endswith("KeyError: 'boom'")
                and "\nError:" not in f"\n{done.stderr}"
            ),
        ),
    ],
    ids=["user-error", "bug"],
)
def test_a_real_process(
    setup: str, check: Callable[[subprocess.CompletedProcess[str]], bool]
) -> None:
    code = setup + (
        "from mlcpatch.cli import main\n"
        "main(['build', '--arch', 'gpt9', '--model', 'tiny-random', '--out', '/nonexistent/x'])\n"
    )
    done = _mlcpatch(code.replace("'gpt9'", "'qwen2'") if setup else code)
    assert check(done), (done.returncode, done.stderr)
