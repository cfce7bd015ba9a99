"""Local checks before publishing: the artifact against its manifest, link files, the model card."""

from __future__ import annotations

import json
import pathlib

import pytest
from fakes.artifacts import NAME, flip_byte, make_artifact, write_links, write_manifest

from mlcpatch import artifact as contract
from mlcpatch.artifact import sha256_file
from mlcpatch.publish.artifact import validate_artifact
from mlcpatch.publish.errors import ArtifactError
from mlcpatch.publish.links import collect_links
from mlcpatch.publish.model_card import render_model_card


@pytest.fixture
def artifact(tmp_path: pathlib.Path) -> pathlib.Path:
    return make_artifact(tmp_path / NAME)


def test_a_matching_folder_gives_every_listed_file_and_the_manifest(artifact: pathlib.Path) -> None:
    checked = validate_artifact(artifact)
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert [p.name for p in checked.files] == [*manifest["files"], "manifest.json"]
    for payload in checked.files:
        assert payload.sha256 == sha256_file(artifact / payload.name)
    assert [p.name for p in checked.wasm_files()] == [f"{NAME}-webgpu.wasm"]
    assert checked.name == NAME


def test_one_flipped_byte_is_refused_naming_the_file(artifact: pathlib.Path) -> None:
    flip_byte(artifact / "params_shard_0.bin")
    with pytest.raises(ArtifactError, match=r"params_shard_0\.bin: sha256 .* manifest says"):
        validate_artifact(artifact)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: (a / "tokenizer.json").unlink(), r"tokenizer\.json: missing"),
        (lambda a: (a / "tokenizer.json").write_text("{}"), r"tokenizer\.json: 2 bytes"),
        (lambda a: (a / "extra.bin").write_bytes(b"x"), r"extra\.bin: not listed"),
        (lambda a: (a / "source" / "x.py").write_text(""), r"source/x\.py: not listed"),
        (lambda a: (a / "manifest.json").write_text("{"), r"not valid JSON"),
    ],
)
def test_other_mismatches_are_refused(artifact: pathlib.Path, damage, message: str) -> None:
    damage(artifact)
    with pytest.raises(ArtifactError, match=message):
        validate_artifact(artifact)


def test_a_manifest_cannot_name_files_outside_the_folder(artifact: pathlib.Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    outside = artifact.parent / "secret.txt"
    outside.write_text("x")
    manifest["files"]["../secret.txt"] = {"size": 1, "sha256": sha256_file(outside)}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a valid file name"):
        validate_artifact(artifact)


def test_an_unknown_manifest_format_is_refused(artifact: pathlib.Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["format"] = 99
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="unknown manifest format 99"):
        validate_artifact(artifact)


def test_the_builds_own_manifest_writer_produces_what_publish_accepts(
    tmp_path: pathlib.Path,
) -> None:
    folder = make_artifact(tmp_path / NAME)
    (folder / "manifest.json").unlink()
    contract.write_manifest(
        folder,
        name=NAME,
        tools={},
        source={"spec": "/home/me/model", "kind": "local"},
        patch={},
        options={"quantization": "q0f32"},
        libraries={},
        param_names=["w"],
    )
    checked = validate_artifact(folder)
    assert len(checked.files) == 9
    assert checked.manifest.source["spec"] == "model"  # no local paths leave the machine


def test_link_files_are_checked(tmp_path: pathlib.Path) -> None:
    weights, spec = write_links(tmp_path / "links")
    assert [p.name for p in collect_links([weights, spec])] == ["links.safetensors", "links.json"]
    weights.write_bytes(weights.read_bytes()[:-4])  # truncated tensor data
    with pytest.raises(ArtifactError, match="outside the file"):
        collect_links([weights])
    spec.write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        collect_links([spec])
    with pytest.raises(ArtifactError, match="not found"):
        collect_links([tmp_path / "nope.safetensors"])


def test_the_model_card_comes_from_the_manifest_and_is_stable(artifact: pathlib.Path) -> None:
    checked = validate_artifact(artifact)
    card = render_model_card(checked, "org/tiny", "https://huggingface.co")
    assert card == render_model_card(checked, "org/tiny", "https://huggingface.co")
    assert card.startswith("---\nlibrary_name: mlc-llm\nbase_model: Qwen/Qwen2.5-0.5B-Instruct\n")
    assert "| quantization | q0f32 |" in card
    assert "| apache-tvm | 0.27.0.post1 |" in card
    assert "hf download org/tiny" in card
    assert f"https://huggingface.co/org/tiny/resolve/main/{NAME}-webgpu.wasm" in card
    for payload in checked.files:
        assert f"| `{payload.name}` | {payload.size} | `{payload.sha256}` |" in card


def test_a_local_source_gets_no_base_model(artifact: pathlib.Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["source"] = {"spec": "/home/me/models/qwen", "kind": "local"}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    card = render_model_card(validate_artifact(artifact), "org/tiny", "https://huggingface.co")
    assert "base_model" not in card


def test_write_manifest_helper_matches_folder(tmp_path: pathlib.Path) -> None:
    folder = make_artifact(tmp_path / NAME)
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(folder)  # re-listing after an edit makes the folder valid again
    validate_artifact(folder)
