"""`mlcpatch publish --hf-repo` against a fake Hub on 127.0.0.1 (real HTTP and huggingface_hub)."""

from __future__ import annotations

import hashlib
import pathlib
from collections.abc import Iterator

import pytest
from fakes.artifacts import NAME, flip_byte, make_artifact, write_links, write_manifest
from fakes.cli import HF_TOKEN, publish
from fakes.hf_hub import FakeHub

from mlcpatch.publish.artifact import validate_artifact
from mlcpatch.publish.model_card import render_model_card

REPO = "org/tiny"


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub(HF_TOKEN) as server:
        yield server


@pytest.fixture
def artifact(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_artifact(tmp_path / NAME)


def _args(artifact: pathlib.Path, hub: FakeHub, *extra: str) -> list[str]:
    return [str(artifact), "--hf-repo", REPO, "--hf-endpoint", hub.url, *extra]


def _local_hashes(artifact: pathlib.Path) -> dict[str, str]:
    return {
        p.relative_to(artifact).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in artifact.rglob("*")
        if p.is_file()
    }


def test_publish_creates_the_repo_and_the_bytes_arrive_intact(
    hub: FakeHub, artifact: pathlib.Path
) -> None:
    result = publish(_args(artifact, hub))
    assert result.exit_code == 0, result.output
    stored = hub.stored(REPO)
    for name, sha in _local_hashes(artifact).items():
        assert stored[name] == sha, name
    card = render_model_card(validate_artifact(artifact), REPO, hub.url)
    assert hub.repos[REPO].files["README.md"].data == card.encode()
    # shards and libraries went through LFS, small JSON files inline
    assert hub.repos[REPO].files["params_shard_0.bin"].lfs
    assert not hub.repos[REPO].files["tokenizer.json"].lfs
    assert len(hub.repos[REPO].commits) == 2  # the repo's first commit + ours
    assert "verified params_shard_1.bin" in result.output
    assert "10 uploaded and verified, 0 unchanged" in result.output


def test_republishing_unchanged_files_writes_nothing(hub: FakeHub, artifact: pathlib.Path) -> None:
    assert publish(_args(artifact, hub)).exit_code == 0
    before = len(hub.log)
    result = publish(_args(artifact, hub))
    assert result.exit_code == 0, result.output
    again = hub.log[before:]
    assert [r for r in again if hub.is_write(r)] == []  # no preupload, LFS, commit, create
    assert [r.path for r in again] == [f"/api/models/{REPO}/paths-info/main"]
    assert len(hub.repos[REPO].commits) == 2
    assert "0 uploaded and verified, 10 unchanged" in result.output


def test_a_changed_file_is_replaced_and_only_it(hub: FakeHub, artifact: pathlib.Path) -> None:
    assert publish(_args(artifact, hub)).exit_code == 0
    flip_byte(artifact / "params_shard_1.bin")
    write_manifest(artifact)
    before = len(hub.log)
    result = publish(_args(artifact, hub))
    assert result.exit_code == 0, result.output
    # the shard, the manifest that lists its new hash, and the card that shows it
    assert hub.repos[REPO].commits[-1]["paths"] == [
        "README.md",
        "manifest.json",
        "params_shard_1.bin",
    ]
    puts = [r.path for r in hub.log[before:] if r.method == "PUT"]
    new_sha = hashlib.sha256((artifact / "params_shard_1.bin").read_bytes()).hexdigest()
    assert puts == [f"/lfs-storage/{new_sha}"]
    assert hub.stored(REPO)["params_shard_1.bin"] == new_sha
    assert "replace  params_shard_1.bin" in result.output
    assert "skip     params_shard_0.bin" in result.output


def test_server_errors_and_timeouts_are_retried(hub: FakeHub, artifact: pathlib.Path) -> None:
    hub.fail("POST", "/paths-info/", 500, times=2)
    hub.fail("POST", "/api/repos/create", 503)
    hub.fail("POST", "/preupload/", 502)
    hub.stall("PUT", "/lfs-storage/", seconds=3.0)  # past the 1 s timeout: dropped
    hub.fail("POST", "/commit/", 500)
    result = publish(_args(artifact, hub))
    assert result.exit_code == 0, result.output + result.stderr
    assert all(f.remaining == 0 for f in hub.faults)
    for name, sha in _local_hashes(artifact).items():
        assert hub.stored(REPO)[name] == sha, name
    assert len(hub.repos[REPO].commits) == 2
    assert "retry 1 of 5" in result.stderr


def test_a_commit_whose_answer_was_lost_is_not_made_twice(
    hub: FakeHub, artifact: pathlib.Path
) -> None:
    hub.fail("POST", "/commit/", 500, after=True)  # committed, but the client sees a 500
    result = publish(_args(artifact, hub))
    assert result.exit_code == 0, result.output + result.stderr
    assert len(hub.repos[REPO].commits) == 2
    assert len(hub.requests_to("POST", "/commit/")) == 1


def test_a_bad_token_gives_a_clear_error(hub: FakeHub, artifact: pathlib.Path) -> None:
    result = publish(_args(artifact, hub), env={"HF_TOKEN": "hf_wrong"})
    assert result.exit_code == 2
    assert "Hugging Face refused the token in HF_TOKEN (HTTP 401)" in result.stderr
    assert "hf_wrong" not in result.output + result.stderr
    assert REPO not in hub.repos


def test_a_token_without_write_access_gives_a_clear_error(
    hub: FakeHub, artifact: pathlib.Path
) -> None:
    assert publish(_args(artifact, hub)).exit_code == 0
    flip_byte(artifact / "params_shard_1.bin")
    write_manifest(artifact)
    hub.read_only = True
    result = publish(_args(artifact, hub))
    assert result.exit_code == 2
    assert "Hugging Face refused the token in HF_TOKEN (HTTP 403)" in result.stderr
    assert len(hub.repos[REPO].commits) == 2


def test_retries_give_up_with_a_one_line_error(hub: FakeHub, artifact: pathlib.Path) -> None:
    hub.fail("POST", "/paths-info/", 500, times=100)
    result = publish(_args(artifact, hub, "--retries", "2"))
    assert result.exit_code == 2
    assert "retry 2 of 2" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: Hugging Face org/tiny: ")
    assert len(hub.requests_to("POST", "/paths-info/")) == 3


def test_dry_run_lists_every_file_and_writes_nothing(hub: FakeHub, artifact: pathlib.Path) -> None:
    links = write_links(artifact.parent / "links")
    args = _args(artifact, hub, "--dry-run", *(a for link in links for a in ("--links", str(link))))
    result = publish(args, env={"HF_TOKEN": None})  # a dry run needs no token
    assert result.exit_code == 0, result.output
    assert hub.writes == [] and hub.repos == {}
    lines = result.output.splitlines()
    assert lines[0].startswith(f"Hugging Face {REPO} ({hub.url}, main): repo does not exist")
    assert "would upload 12 of 12 files" in lines[0]
    for payload in validate_artifact(artifact).files:
        assert f"  upload   {payload.name}  {payload.size} bytes  sha256:{payload.sha256}" in lines
    assert any(line.startswith("  upload   links/links.safetensors  ") for line in lines)
    assert any(line.startswith("  upload   README.md  ") for line in lines)
    assert lines[-1] == "dry run: nothing was written"

    assert publish(_args(artifact, hub)).exit_code == 0
    flip_byte(artifact / "tokenizer.json", offset=2)
    write_manifest(artifact)
    before = len(hub.log)
    result = publish(_args(artifact, hub, "--dry-run"))
    assert [r for r in hub.log[before:] if hub.is_write(r)] == []
    assert "would upload 3 of 10 files" in result.output
    assert "  replace  tokenizer.json  " in result.output
    assert "  skip     params_shard_0.bin  " in result.output


def test_local_paths_stay_home(hub: FakeHub, artifact: pathlib.Path) -> None:
    import json

    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    local = str(artifact.parent / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    manifest["source"] = {"spec": local, "kind": "gguf", "files_sha256": {}}
    manifest["mlc_llm"] = {"staging_dir": str(artifact.parent / ".x.building-1-abcdefgh")}
    manifest_path.write_text(json.dumps(manifest))
    result = publish(_args(artifact, hub))
    assert result.exit_code == 0, result.output
    published = hub.repos[REPO].files["manifest.json"].data.decode()
    card = hub.repos[REPO].files["README.md"].data.decode()
    for text in (published, card):
        assert str(artifact.parent) not in text
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in published and "SmolLM2-135M" in card
    assert json.loads(published)["files"] == manifest["files"]  # what readers check is intact
    assert json.loads(manifest_path.read_text()) == manifest  # the local file is left alone
