"""`mlcpatch publish` as a whole: argument errors, refusal before any request, token secrecy."""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Iterator

import pytest
from fakes.artifacts import NAME, flip_byte, make_artifact, write_links
from fakes.cli import GITHUB_TOKEN, HF_TOKEN, publish
from fakes.github import FakeGitHub
from fakes.hf_hub import FakeHub

from mlcpatch.publish.tokens import Secret, scrub


@pytest.fixture
def servers() -> Iterator[tuple[FakeHub, FakeGitHub]]:
    with FakeHub(HF_TOKEN) as hub, FakeGitHub(GITHUB_TOKEN) as github:
        yield hub, github


@pytest.fixture
def artifact(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_artifact(tmp_path / NAME)


def _both(artifact: pathlib.Path, hub: FakeHub, github: FakeGitHub, *extra: str) -> list[str]:
    return [
        str(artifact),
        "--hf-repo",
        "org/tiny",
        "--hf-endpoint",
        hub.url,
        "--github-release",
        "owner/models@v1",
        "--github-api-url",
        github.url,
        *extra,
    ]


def test_a_corrupted_artifact_is_refused_before_any_request(
    servers: tuple[FakeHub, FakeGitHub], artifact: pathlib.Path
) -> None:
    hub, github = servers
    flip_byte(artifact / "params_shard_0.bin")
    result = publish(_both(artifact, hub, github))
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith(f"Error: {artifact} does not match its manifest.json")
    assert "params_shard_0.bin: sha256" in message and len(message.splitlines()) == 1
    assert hub.log == [] and github.log == []


def test_a_bad_link_file_is_refused_before_any_request(
    servers: tuple[FakeHub, FakeGitHub], artifact: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    hub, github = servers
    weights, _ = write_links(tmp_path / "links")
    weights.write_bytes(weights.read_bytes()[:20])
    result = publish(_both(artifact, hub, github, "--links", str(weights)))
    assert result.exit_code == 2
    assert "links.safetensors" in result.stderr
    assert hub.log == [] and github.log == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "nothing to do: pass --hf-repo and/or --github-release"),
        (["--hf-repo", "no-slash"], "'no-slash' is not ORG/NAME"),
        (["--github-release", "owner/repo"], "'owner/repo' is not OWNER/REPO@TAG"),
    ],
)
def test_argument_errors(artifact: pathlib.Path, args: list[str], message: str) -> None:
    result = publish([str(artifact), *args])
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize("variable", ["HF_TOKEN", "GITHUB_TOKEN"])
def test_a_missing_token_is_a_clear_error_before_any_request(
    servers: tuple[FakeHub, FakeGitHub], artifact: pathlib.Path, variable: str
) -> None:
    hub, github = servers
    result = publish(_both(artifact, hub, github), env={variable: None})
    assert result.exit_code == 2
    assert f"{variable} is not set" in result.stderr
    assert hub.log == [] and github.log == []


def test_tokens_never_reach_output_or_logs(
    servers: tuple[FakeHub, FakeGitHub],
    artifact: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub, github = servers
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    hub.fail("POST", "/preupload/", 500)
    hub.fail("POST", "/commit/", 500)
    github.fail("POST", "/uploads/", 502)
    github.stall("GET", "/releases/tags/", seconds=2.0)
    runs = [
        publish(_both(artifact, hub, github)),  # with retries
        publish(_both(artifact, hub, github)),  # nothing to do
        publish(_both(artifact, hub, github, "--dry-run")),
    ]
    hub.fail("POST", "/paths-info/", 500, times=100)
    runs.append(publish(_both(artifact, hub, github, "--retries", "1")))  # gives up
    assert [r.exit_code for r in runs] == [0, 0, 0, 2]
    # the check means something only if the libraries did log at DEBUG
    assert "huggingface_hub" in {r.name.split(".")[0] for r in caplog.records}
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    everything = caplog.text + "".join(r.output + r.stderr for r in runs)
    assert HF_TOKEN not in everything and GITHUB_TOKEN not in everything
    # the requests did carry them: the servers accepted the writes
    assert hub.repos["org/tiny"].files and github.assets


def test_a_library_for_one_cpu_is_published_with_a_note(
    servers: tuple[FakeHub, FakeGitHub], artifact: pathlib.Path
) -> None:
    hub, github = servers
    plain = publish(_both(artifact, hub, github, "--dry-run"))
    assert plain.exit_code == 0 and "compiled for" not in plain.stderr
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["options"]["cpu"] = "znver3"
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    result = publish(_both(artifact, hub, github, "--dry-run"))
    assert result.exit_code == 0, result.output
    assert "compiled for 'znver3'" in result.stderr and "--cpu portable" in result.stderr


def test_a_secret_prints_as_stars() -> None:
    secret = Secret("hf_abc123")
    assert "hf_abc123" not in f"{secret} {secret!r} {[secret]} {vars(type(secret))}"
    assert scrub("Bearer hf_abc123 failed", secret) == "Bearer *** failed"
