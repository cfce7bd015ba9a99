"""Running `mlcpatch publish` the way a user does, with test tokens and short timeouts."""

from __future__ import annotations

from click.testing import CliRunner, Result

from mlcpatch.cli import main

HF_TOKEN = "hf_TestToken7f3a9c2e5b8d1f4a6c0e"
GITHUB_TOKEN = "ghp_TestToken2b7e9d4c1a8f5e3b6d0c"

# Variables a CI runner sets that would otherwise steer the command under test.
_CLEAN = {"HF_ENDPOINT": None, "GITHUB_API_URL": None, "GITHUB_SHA": None}


def publish(args: list[str], env: dict[str, str | None] | None = None) -> Result:
    runner = CliRunner()
    full_env = {"HF_TOKEN": HF_TOKEN, "GITHUB_TOKEN": GITHUB_TOKEN, **_CLEAN, **(env or {})}
    return runner.invoke(
        main,
        ["publish", *args, "--timeout", "1", "--retry-wait", "0.05"],
        env=full_env,
        catch_exceptions=False,
    )
