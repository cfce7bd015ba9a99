"""Engine.load checks an artifact folder against its manifest.json, as the Python runtime does.

Copies of the tiny Qwen2 build (llvm + webgpu, tests/playground_support.py) are broken one way
each, served by `mlcpatch serve` and loaded in one headless Chromium page: the engine must
refuse each with a message naming the problem (and so must mlcpatch.runtime.Runtime), fetch
nothing a refused name points at, and drop a corrupted shard from its cache so that the next
load, once the folder is repaired, downloads it again and runs.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browser_support import BrowserSession, chromium

from mlcpatch.runtime import ArtifactError, Runtime
from mlcpatch.serve import WEB_DIR, Server, running_server

pytestmark = pytest.mark.browser

MODEL = "tiny-qwen2"

# Load the artifact at arg.url; on success generate a few greedy tokens and free the engine.
LOAD_JS = """async (arg) => {
  const m = await import('/src/engine.js');
  let engine;
  try {
    engine = await m.Engine.load(arg.url);
  } catch (e) {
    return {ok: false, name: e.name, message: String(e.message ?? e)};
  }
  try {
    const out = await engine.generate({promptIds: arg.ids},
                                      {maxNewTokens: 4, greedy: true, stopTokenIds: []});
    return {ok: true, outputIds: out.outputIds};
  } finally {
    engine.dispose();
  }
}"""


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The session's intact build (never modified: each test works on a copy)."""
    from playground_support import linked_builds

    return (linked_builds(tmp_path_factory, [MODEL]) / MODEL).resolve()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The folder `mlcpatch serve` serves: each test copies the build into it, then breaks it."""
    return tmp_path_factory.mktemp("manifest-artifacts")


@pytest.fixture(scope="module")
def server(served: pathlib.Path) -> Iterator[Server]:
    with running_server(WEB_DIR, served) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[BrowserSession]:
    with chromium(webgpu=True) as session:
        yield session


# The artifact URLs the page requested during the latest _load.
REQUESTED: list[str] = []


@pytest.fixture(scope="module")
def page(browser: BrowserSession, server: Server) -> Iterator[Any]:
    """One page for every case."""
    page = browser.new_page(server.url + "index.html")
    page.on("request", lambda request: REQUESTED.append(request.url))
    yield page
    page.close()


def _load(page: Any, name: str, ids: list[int] | None = None) -> dict[str, Any]:
    REQUESTED.clear()
    result = page.evaluate(LOAD_JS, {"url": f"/artifacts/{name}/", "ids": ids or [1, 2, 3]})
    REQUESTED[:] = [u for u in REQUESTED if "/artifacts/" in u and "/index.json" not in u]
    return result


def _json(path: pathlib.Path) -> Any:
    return json.loads(path.read_text())


def _flip_byte(path: pathlib.Path) -> bytes:
    """Corrupt one byte in the middle of `path` (same size); the original bytes."""
    data = path.read_bytes()
    broken = bytearray(data)
    broken[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(broken))
    return data


def _relist(folder: pathlib.Path, name: str) -> None:
    """Record `name`'s current size and sha256 in the manifest (only its content is wrong)."""
    manifest = _json(folder / "manifest.json")
    data = (folder / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _first_shard(folder: pathlib.Path) -> str:
    return _json(folder / "tensor-cache.json")["records"][0]["dataPath"]


def _wasm(folder: pathlib.Path) -> str:
    return _json(folder / "mlc-chat-config.json")["model_lib"]["webgpu"]


def _no_manifest(folder: pathlib.Path) -> str:
    (folder / "manifest.json").unlink()
    return "no manifest.json"


def _bad_wasm(folder: pathlib.Path) -> str:
    _flip_byte(folder / _wasm(folder))
    return f"{_wasm(folder)}: sha256 mismatch"


def _escaping_shard(folder: pathlib.Path) -> str:
    cache = _json(folder / "tensor-cache.json")
    cache["records"][0]["dataPath"] = "../x"
    (folder / "tensor-cache.json").write_text(json.dumps(cache))
    _relist(folder, "tensor-cache.json")
    return "weight shard [\"']\\.\\./x[\"'] is not a relative path inside the folder"


def _unlisted_shard(folder: pathlib.Path) -> str:
    manifest = _json(folder / "manifest.json")
    shard = _first_shard(folder)
    del manifest["files"][shard]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return f"does not list {shard}"


def _bad_manifest(change: Callable[[dict[str, Any]], Any], expected: str) -> Callable[..., str]:
    def breaker(folder: pathlib.Path) -> str:
        manifest = _json(folder / "manifest.json")
        text = change(manifest)
        if not isinstance(text, str):
            text = json.dumps(manifest)
        (folder / "manifest.json").write_text(text)
        return expected

    return breaker


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest.__setitem__(key, value)


def _bad_entry(manifest: dict[str, Any]) -> None:
    manifest["files"]["tokenizer.json"]["sha256"] = "not a hash"


def _outside_name(manifest: dict[str, Any]) -> None:
    manifest["files"]["../tokenizer.json"] = manifest["files"]["tokenizer.json"]


# case -> how to break a copy (returns a regex both engines' messages must match).
CASES: dict[str, Callable[[pathlib.Path], str]] = {
    "no-manifest": _no_manifest,
    "bad-wasm": _bad_wasm,
    "escaping-shard": _escaping_shard,
    "unlisted-shard": _unlisted_shard,
    "manifest-not-json": _bad_manifest(lambda m: "{not json", "manifest.json: not valid JSON"),
    "manifest-format-2": _bad_manifest(_set("format", 2), "unknown manifest format 2"),
    "manifest-no-files": _bad_manifest(_set("files", {}), 'no "files" table'),
    "manifest-bad-entry": _bad_manifest(
        _bad_entry, "entry ['\"]tokenizer.json['\"] needs an integer size and a sha256"
    ),
    "manifest-outside-name": _bad_manifest(
        _outside_name, "['\"]\\.\\./tokenizer.json['\"] is not a valid file name"
    ),
}


def _copy(source: pathlib.Path, served: pathlib.Path, name: str) -> pathlib.Path:
    folder = served / name
    shutil.copytree(source, folder)
    return folder


@pytest.mark.parametrize("case", list(CASES))
def test_load_refuses_a_broken_artifact(
    page: Any, source: pathlib.Path, served: pathlib.Path, case: str
) -> None:
    folder = _copy(source, served, case)
    expected = CASES[case](folder)
    result = _load(page, case)
    assert result["ok"] is False, result
    assert result["name"] == "ArtifactError", result
    assert re.search(expected, result["message"]), result["message"]
    # Nothing that was refused, and no weights, were fetched.
    assert not any(u.endswith(".bin") or "/artifacts/x" in u for u in REQUESTED), REQUESTED
    if case.startswith(("no-", "manifest-")):  # refused before anything but the manifest
        assert all(u.endswith(f"/{case}/manifest.json") for u in REQUESTED), REQUESTED
    # The Python runtime applies the same rules.
    with pytest.raises(ArtifactError, match=expected):
        Runtime(folder)


def test_corrupted_shard_is_refused_dropped_from_cache_and_refetched(
    page: Any, source: pathlib.Path, served: pathlib.Path
) -> None:
    """A corrupted shard fails the load naming it; repaired, the next load downloads it again
    (the bad copy left Cache Storage) and the model runs like the CPU build."""
    folder = _copy(source, served, "bad-shard")
    shard = _first_shard(folder)
    original = _flip_byte(folder / shard)
    result = _load(page, "bad-shard")
    assert result["ok"] is False and result["name"] == "ArtifactError", result
    assert f"bad-shard/{shard}: sha256 mismatch" in result["message"], result["message"]
    assert "corrupted" in result["message"]
    assert any(u.endswith(f"/bad-shard/{shard}") for u in REQUESTED), REQUESTED
    with pytest.raises(ArtifactError, match=f"{shard}: sha256 mismatch"):
        Runtime(folder)

    (folder / shard).write_bytes(original)
    rt = Runtime(folder)
    ids = rt.encode_chat("What is two plus two?")
    result = _load(page, "bad-shard", ids)
    assert result["ok"] is True, result
    assert any(u.endswith(f"/bad-shard/{shard}") for u in REQUESTED), REQUESTED
    expected = rt.generate(prompt_ids=ids, max_new_tokens=4, greedy=True, stop_token_ids=[])
    assert result["outputIds"] == expected.output_ids
