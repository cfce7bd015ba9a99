"""The artifact folder contract lives in one module, mlcpatch/artifact.py: its file names, the
one sha256 of a file, the typed manifest both backends write, and the one verifier."""

from __future__ import annotations

import ast
import json
import pathlib
import re

import pytest
from fakes.artifacts import NAME, flip_byte, make_artifact

import mlcpatch
from mlcpatch import artifact
from mlcpatch.artifact import (
    ArtifactError,
    Manifest,
    is_artifact_folder,
    read_manifest,
    sha256_file,
    verify_artifact,
    write_manifest,
)

PACKAGE = pathlib.Path(mlcpatch.__file__).parent
ENGINE_JS = PACKAGE.parent / "web" / "src" / "engine.js"
CONTRACT_NAMES = {"manifest.json", "mlc-chat-config.json", "tensor-cache.json"}
# Calls that read a file's bytes: a function that also uses hashlib.sha256 hashes a file.
_FILE_READS = {"open", "read", "read_bytes", "readinto"}


def _sources() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(PACKAGE.parent).as_posix(), ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def _docstrings(tree: ast.Module) -> set[int]:
    nodes = [tree, *ast.walk(tree)]
    return {
        id(node.body[0].value)
        for node in nodes
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def contract_name_sites(tree: ast.Module) -> list[str]:
    """Every string in code (not a docstring) that is exactly one of the contract's file names."""
    docs = _docstrings(tree)
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in CONTRACT_NAMES and id(node) not in docs
    ]


def file_hashers(tree: ast.Module) -> list[str]:
    """Functions that both use hashlib's sha256 and read a file: each computes a file's sha256."""
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        uses_sha256 = reads = False
        for node in ast.walk(func):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id == "hashlib" and node.attr in ("sha256", "new", "file_digest"):
                    uses_sha256 = True
            if isinstance(node, ast.Call):
                callee = node.func
                name = callee.attr if isinstance(callee, ast.Attribute) else None
                name = callee.id if isinstance(callee, ast.Name) else name
                reads = reads or name in _FILE_READS
        if uses_sha256 and reads:
            found.append(func.name)
    return found


def test_one_module_names_the_contract_files() -> None:
    sites = {path: names for path, tree in _sources() if (names := contract_name_sites(tree))}
    assert list(sites) == ["mlcpatch/artifact.py"], sites
    assert sorted(sites["mlcpatch/artifact.py"]) == sorted(CONTRACT_NAMES)


def test_one_function_computes_a_files_sha256() -> None:
    hashers = {path: names for path, tree in _sources() if (names := file_hashers(tree))}
    assert hashers == {"mlcpatch/artifact.py": ["sha256_file"]}


def test_the_scans_catch_what_they_look_for() -> None:
    """A second definition of a name, or a second file hasher, is seen (so the tests above can
    fail)."""
    code = ast.parse(
        '"""manifest.json is named in a docstring: allowed."""\n'
        'import hashlib\nCONFIG = "mlc-chat-config.json"\n'
        "def digest(path):\n    return hashlib.sha256(path.read_bytes()).hexdigest()\n"
        "def stream(f):\n    h = hashlib.sha256()\n    h.update(f.read())\n    return h\n"
        "def of_bytes(data):\n    return hashlib.sha256(data).hexdigest()\n"
    )
    assert contract_name_sites(code) == ["mlc-chat-config.json"]
    assert file_hashers(code) == ["digest", "stream"]


def test_the_browser_engine_uses_the_same_names_and_formats() -> None:
    text = ENGINE_JS.read_text(encoding="utf-8")
    constants = dict(
        re.findall(r'^const (MANIFEST|CHAT_CONFIG|TENSOR_CACHE) = "([^"]+)";', text, re.M)
    )
    assert constants == {
        "MANIFEST": artifact.MANIFEST,
        "CHAT_CONFIG": artifact.CHAT_CONFIG,
        "TENSOR_CACHE": artifact.TENSOR_CACHE,
    }
    formats = re.search(r"^const KNOWN_FORMATS = \[([\d, ]+)\];", text, re.M)
    assert formats is not None
    assert tuple(int(f) for f in formats[1].split(",")) == artifact.KNOWN_FORMATS
    # Every other mention of the names in the engine goes through the constants.
    for name in CONTRACT_NAMES:
        assert text.count(f'"{name}"') == 1, name


def test_one_artifact_error_class() -> None:
    from mlcpatch.errors import MlcpatchError
    from mlcpatch.publish.errors import ArtifactError as PublishArtifactError
    from mlcpatch.runtime import ArtifactError as RuntimeArtifactError

    assert RuntimeArtifactError is ArtifactError is PublishArtifactError
    assert issubclass(ArtifactError, MlcpatchError)


def test_sha256_file_streams_and_feeds_a_running_digest(tmp_path: pathlib.Path) -> None:
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(b"abc" * 3_000_000)  # over two read chunks
    assert sha256_file(path) == hashlib.sha256(b"abc" * 3_000_000).hexdigest()
    running = hashlib.sha256(b"prefix")
    sha256_file(path, running)
    assert running.hexdigest() == hashlib.sha256(b"prefix" + b"abc" * 3_000_000).hexdigest()


def test_written_manifest_reads_back_typed(tmp_path: pathlib.Path) -> None:
    folder = make_artifact(tmp_path / NAME)
    (folder / "manifest.json").unlink()
    written = write_manifest(
        folder,
        name=NAME,
        tools={"python": "3.11"},
        source={"spec": "tiny-random", "kind": "tiny"},
        patch={"patched": True},
        options={"quantization": "q0f32"},
        libraries={"llvm": f"{NAME}-cpu.so"},
        param_names=["model.embed_tokens.weight"],
        extra={"backend": "mlc", "mlc_llm": {"version": "0.20.0"}},
    )
    read = read_manifest(folder)
    assert read == written
    assert read.files[f"{NAME}-cpu.so"].size == (folder / f"{NAME}-cpu.so").stat().st_size
    assert "manifest.json" not in read.files and "source/qwen2_model.py" in read.files
    data = json.loads((folder / "manifest.json").read_text())
    assert data["format"] == 1 and data["backend"] == "mlc" and data["mlc_llm"]["version"]
    assert Manifest.from_json(data, "x").to_json() == data  # nothing lost on a round trip
    assert verify_artifact(folder, exact=True) == read


def test_a_hand_written_manifest_round_trips(tmp_path: pathlib.Path) -> None:
    folder = make_artifact(tmp_path / NAME)
    data = json.loads((folder / "manifest.json").read_text())
    assert read_manifest(folder).to_json() == data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.__setitem__("format", 2), "unknown manifest format 2"),
        (lambda m: m.pop("files"), 'no "files" table'),
        (lambda m: m["files"].__setitem__("./x", {"size": 1, "sha256": "0" * 64}), "'./x'"),
        (lambda m: m["files"].__setitem__("x", {"size": True, "sha256": "0" * 64}), "integer"),
        (lambda m: m["files"].__setitem__("x", {"size": 1, "sha256": "ABC"}), "sha256"),
        (lambda m: m.__setitem__("options", ["q0f32"]), "'options' should be a JSON dict"),
        (lambda m: m.__setitem__("param_names", "w"), "'param_names' should be a JSON list"),
        (lambda m: m.__setitem__("param_names", [1]), "'param_names' should list strings"),
        (lambda m: m.__setitem__("created_unix", "today"), "'created_unix' should be a JSON int"),
    ],
)
def test_the_reader_is_strict(tmp_path: pathlib.Path, change, message: str) -> None:
    folder = make_artifact(tmp_path / NAME)
    data = json.loads((folder / "manifest.json").read_text())
    change(data)
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=re.escape(message)):
        read_manifest(folder)


def test_verify_names_each_problem_and_exact_refuses_unlisted_files(
    tmp_path: pathlib.Path,
) -> None:
    folder = make_artifact(tmp_path / NAME)
    (folder / "notes.txt").write_text("mine")
    assert verify_artifact(folder).name == NAME  # loading ignores files it never opens
    with pytest.raises(ArtifactError, match=r"notes\.txt: not listed in manifest\.json"):
        verify_artifact(folder, exact=True)
    flip_byte(folder / "params_shard_1.bin")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match=r"params_shard_1\.bin: sha256 mismatch.*tokenizer"):
        verify_artifact(folder)


def test_is_artifact_folder(tmp_path: pathlib.Path) -> None:
    folder = make_artifact(tmp_path / NAME)
    assert is_artifact_folder(folder)
    staged = make_artifact(tmp_path / f".{NAME}.building-1-abc")
    assert not is_artifact_folder(staged)  # a build's staging folder
    (folder / "manifest.json").unlink()
    assert not is_artifact_folder(folder)
    assert not is_artifact_folder(tmp_path / "missing")
