"""`mlcpatch publish --github-release` against a fake GitHub REST API on 127.0.0.1."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import pytest
from fakes.artifacts import NAME, make_artifact, write_links, write_manifest
from fakes.cli import GITHUB_TOKEN, publish
from fakes.github import FakeGitHub

OWNER_REPO = "owner/models"
TAG = "models-v1"
WASM = f"{NAME}-webgpu.wasm"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    # Two assets a page: listing the three assets of a release needs the Link header.
    with FakeGitHub(GITHUB_TOKEN, page_size=2) as server:
        yield server


@pytest.fixture
def artifact(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_artifact(tmp_path / NAME)


@pytest.fixture
def links(tmp_path: pathlib.Path) -> list[pathlib.Path]:
    return write_links(tmp_path / "links")


def _args(artifact: pathlib.Path, links: list[pathlib.Path], server: FakeGitHub) -> list[str]:
    args = [str(artifact), "--github-release", f"{OWNER_REPO}@{TAG}"]
    args += ["--github-api-url", server.url]
    for link in links:
        args += ["--links", str(link)]
    return args


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expected(artifact: pathlib.Path, links: list[pathlib.Path]) -> dict[str, str]:
    return {WASM: _sha(artifact / WASM), **{link.name: _sha(link) for link in links}}


def test_publish_creates_the_release_and_uploads_wasm_and_links(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    result = publish(_args(artifact, links, github), env={"GITHUB_SHA": "abc123"})
    assert result.exit_code == 0, result.output + result.stderr
    assert github.stored(OWNER_REPO, TAG) == _expected(artifact, links)
    created = github.requests_to("POST", r"/releases$")
    assert [r.json() for r in created] == [
        {"tag_name": TAG, "name": TAG, "target_commitish": "abc123"}
    ]
    assert "3 uploaded and verified, 0 unchanged" in result.output


def test_republishing_unchanged_assets_writes_nothing(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    assert publish(_args(artifact, links, github)).exit_code == 0
    before = len(github.log)
    result = publish(_args(artifact, links, github))
    assert result.exit_code == 0, result.output
    assert [r for r in github.log[before:] if github.is_write(r)] == []
    assert "0 uploaded and verified, 3 unchanged" in result.output


def test_without_digests_assets_are_downloaded_and_hashed(
    artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    with FakeGitHub(GITHUB_TOKEN, digests=False) as github:
        assert publish(_args(artifact, links, github)).exit_code == 0
        before = len(github.log)
        result = publish(_args(artifact, links, github))
        assert result.exit_code == 0, result.output
        again = github.log[before:]
        assert [r for r in again if github.is_write(r)] == []
        assert len([r for r in again if r.path.startswith("/storage/")]) == 3


def test_a_changed_asset_is_deleted_and_uploaded_again(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    assert publish(_args(artifact, links, github)).exit_code == 0
    links[1].write_text('{"format": 1, "agents": ["a"], "links": []}\n')
    before = len(github.log)
    result = publish(_args(artifact, links, github))
    assert result.exit_code == 0, result.output
    writes = [
        (r.method, r.path, r.query.get("name")) for r in github.log[before:] if r.method != "GET"
    ]
    assert [w[0] for w in writes] == ["DELETE", "POST"]
    assert writes[1][2] == ["links.json"]
    assert github.stored(OWNER_REPO, TAG) == _expected(artifact, links)
    assert "replace  links.json" in result.output


def test_server_errors_timeouts_and_lost_answers_are_retried(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    github.fail("GET", "/releases/tags/", 502)
    github.fail("POST", r"/releases$", 500)
    github.stall("POST", "/uploads/", seconds=3.0)  # past the 1 s timeout: dropped
    github.fail("POST", "/uploads/", 503)
    github.fail("POST", "/uploads/", 500, after=True)  # stored, but the answer is a 500
    github.fail("GET", "/assets$", 504)
    result = publish(_args(artifact, links, github))
    assert result.exit_code == 0, result.output + result.stderr
    assert all(f.remaining == 0 for f in github.faults)
    assert github.stored(OWNER_REPO, TAG) == _expected(artifact, links)
    assert len(github.releases) == 1
    assert "retry 1 of 5" in result.stderr


def test_errors_while_reading_an_existing_release_are_retried(
    artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    with FakeGitHub(GITHUB_TOKEN, digests=False) as github:
        assert publish(_args(artifact, links, github)).exit_code == 0
        github.fail("GET", "/assets$", 500)
        github.stall("GET", "/storage/", seconds=3.0)
        result = publish(_args(artifact, links, github))
        assert result.exit_code == 0, result.output + result.stderr
        assert all(f.remaining == 0 for f in github.faults)
        assert "0 uploaded and verified, 3 unchanged" in result.output


def test_a_corrupted_upload_is_caught_by_verification_and_redone(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    github.corrupt_uploads = 1
    result = publish(_args(artifact, links, github))
    assert result.exit_code == 0, result.output + result.stderr
    assert github.stored(OWNER_REPO, TAG) == _expected(artifact, links)
    assert "GitHub holds" in result.stderr  # the verification failure that caused the retry
    assert len(github.requests_to("DELETE", "/assets/")) == 1


def test_a_bad_token_gives_a_clear_error(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    result = publish(_args(artifact, links, github), env={"GITHUB_TOKEN": "ghp_wrong"})
    assert result.exit_code == 2
    assert "GitHub refused the token in GITHUB_TOKEN (HTTP 401 Bad credentials)" in result.stderr
    assert "ghp_wrong" not in result.output + result.stderr
    assert github.releases == {}


def test_dry_run_lists_assets_and_writes_nothing(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    result = publish([*_args(artifact, links, github), "--dry-run"], env={"GITHUB_TOKEN": None})
    assert result.exit_code == 0, result.output
    assert github.writes == [] and github.releases == {}
    lines = result.output.splitlines()
    assert lines[0] == (
        f"GitHub release {OWNER_REPO}@{TAG} ({github.url}): release does not exist; "
        f"would upload 3 of 3 files ({(artifact / WASM).stat().st_size + 99 + 41} bytes)"
    )
    for name, sha in _expected(artifact, links).items():
        assert any(line.startswith(f"  upload   {name}  ") and sha in line for line in lines)


def test_an_artifact_without_wasm_or_links_has_nothing_for_a_release(
    github: FakeGitHub, artifact: pathlib.Path
) -> None:
    (artifact / WASM).unlink()
    write_manifest(artifact)
    result = publish(_args(artifact, [], github))
    assert result.exit_code == 2
    assert "no .wasm" in result.stderr
    assert github.log == []


@pytest.mark.parametrize(
    "tag", ["v1/../../../../user?x=1", "v1~2", ".hidden", "v1.lock", "a..b", "v1/", "x:y"]
)
def test_a_tag_git_would_refuse_is_refused_before_any_request(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path], tag: str
) -> None:
    args = _args(artifact, links, github)
    args[args.index(f"{OWNER_REPO}@{TAG}")] = f"{OWNER_REPO}@{tag}"
    result = publish(args)
    assert result.exit_code != 0 and "is not a valid tag name" in result.output
    assert github.log == []


def test_a_tag_with_a_slash_stays_one_path_segment(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    args = _args(artifact, links, github)
    args[args.index(f"{OWNER_REPO}@{TAG}")] = f"{OWNER_REPO}@release/v1"
    result = publish(args)
    assert result.exit_code == 0, result.output
    (lookup, *_) = github.requests_to("GET", r"/releases/tags/")
    assert lookup.path.endswith("/releases/tags/release%2Fv1")
    assert github.stored(OWNER_REPO, "release/v1") == _expected(artifact, links)


def test_the_token_never_goes_to_an_upload_url_on_another_host(
    github: FakeGitHub, artifact: pathlib.Path, links: list[pathlib.Path]
) -> None:
    github.upload_base = github.url.replace("127.0.0.1", "localhost")
    result = publish(_args(artifact, links, github))
    assert result.exit_code != 0
    assert "on host 'localhost'" in result.output and "the token is not sent" in result.output
    assert github.requests_to("POST", r"/uploads/") == []
    assert GITHUB_TOKEN not in result.output


def test_an_api_url_off_this_machine_must_be_https(
    artifact: pathlib.Path, links: list[pathlib.Path], github: FakeGitHub
) -> None:
    args = _args(artifact, links, github)
    args[args.index(github.url)] = "http://api.example.invalid"
    result = publish(args)
    assert result.exit_code != 0 and "is not https" in result.output
