"""The artifact folder: layout, manifest, patch status, tensor-cache format, cache reuse."""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Callable

import pytest

from mlcpatch.build.pipeline import BuildOptions, build
from mlcpatch.build.shards import SHARD_CAP_BYTES
from mlcpatch.models.registry import builtin_model_file

pytestmark = pytest.mark.heavy

HIDDEN_FUNCTIONS = ("get_last_hidden", "decode_last_hidden")


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def artifact(built: Callable[..., pathlib.Path]) -> pathlib.Path:
    return built("qwen2-untied")


def test_layout(artifact: pathlib.Path) -> None:
    names = {p.name for p in artifact.iterdir()}
    lib = f"{artifact.name}-cpu.so"
    for expected in (
        "mlc-chat-config.json",
        "manifest.json",
        "tensor-cache.json",
        "params_shard_0.bin",
        "tokenizer.json",
        "tokenizer_config.json",
        lib,
    ):
        assert expected in names
    chat = json.loads((artifact / "mlc-chat-config.json").read_text())
    for key in (
        "model_type",
        "quantization",
        "context_window_size",
        "prefill_chunk_size",
        "vocab_size",
        "conv_template",
        "tokenizer_files",
        "model_config",
    ):
        assert key in chat
    assert chat["model_type"] == "qwen2" and chat["quantization"] == "q0f32"
    assert chat["model_lib"] == {"llvm": lib}
    assert chat["model_config"]["num_key_value_heads"] == 2
    assert "tokenizer.json" in chat["tokenizer_files"]
    assert not list(artifact.parent.glob(".*building*"))  # the staging folder was renamed


def test_manifest_lists_every_file_with_sha256(artifact: pathlib.Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    on_disk = {
        p.relative_to(artifact).as_posix()
        for p in artifact.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(manifest["files"]) == on_disk
    for rel, info in manifest["files"].items():
        assert info["size"] == (artifact / rel).stat().st_size
        assert info["sha256"] == _sha256(artifact / rel)
    assert manifest["tools"]["apache-tvm"].startswith("0.27")
    assert manifest["source"]["kind"] == "local"
    assert manifest["options"]["quantization"] == "q0f32"
    assert manifest["options"]["targets"] == ["llvm"]


def test_build_patched_a_copy_not_the_builtin(artifact: pathlib.Path) -> None:
    manifest = json.loads((artifact / "manifest.json").read_text())
    patch = manifest["patch"]
    assert patch["patched"] is True and patch["changed"] is True
    assert patch["functions_added"] == list(HIDDEN_FUNCTIONS)
    assert patch["patcher_version"]
    copy = (artifact / "source" / "qwen2_model.py").read_text()
    pristine = builtin_model_file("qwen2").read_text()
    for fn in HIDDEN_FUNCTIONS:
        assert f"def {fn}(" in copy
        assert f'"{fn}"' in copy  # its spec entry
        assert fn not in pristine
    assert patch["pristine_sha256"] == _sha256(builtin_model_file("qwen2"))
    assert patch["patched_sha256"] == _sha256(artifact / "source" / "qwen2_model.py")


def test_tensor_cache_format(artifact: pathlib.Path) -> None:
    """The layout tvmjs.dump_tensor_cache writes and the JS fetchTensorCache reads."""
    cache = json.loads((artifact / "tensor-cache.json").read_text())
    manifest = json.loads((artifact / "manifest.json").read_text())
    names = []
    for shard in cache["records"]:
        data = (artifact / shard["dataPath"]).read_bytes()
        assert shard["format"] == "raw-shard"
        assert shard["nbytes"] == len(data) <= SHARD_CAP_BYTES
        assert shard["md5sum"] == hashlib.md5(data).hexdigest()
        end = 0
        for rec in shard["records"]:
            assert rec["format"] == "raw" and rec["dtype"] == "float32"
            assert rec["byteOffset"] == end
            assert rec["nbytes"] == 4 * int(__import__("math").prod(rec["shape"]))
            end += rec["nbytes"]
            names.append(rec["name"])
        assert end == len(data)
    assert names == manifest["param_names"] == cache["metadata"]["param_names"]
    assert "model.layers.0.self_attn.c_attn.weight" in names  # q/k/v fused
    assert "model.layers.1.mlp.gate_up_proj.weight" in names  # gate/up fused


def test_tensor_cache_is_readable_by_tvmjs_loader(artifact: pathlib.Path) -> None:
    import numpy as np
    import tvm
    from tvm.contrib import tvmjs

    params, _ = tvmjs.load_tensor_cache(str(artifact), tvm.cpu())
    hf = __import__("safetensors.numpy", fromlist=["load_file"])
    manifest = json.loads((artifact / "manifest.json").read_text())
    source = pathlib.Path(manifest["source"]["spec"])
    ref = hf.load_file(str(source / "model.safetensors"))
    np.testing.assert_array_equal(
        params["model.embed_tokens.weight"].numpy(), ref["model.embed_tokens.weight"]
    )
    fused = params["model.layers.0.mlp.gate_up_proj.weight"].numpy()
    np.testing.assert_array_equal(
        fused,
        np.concatenate(
            [ref["model.layers.0.mlp.gate_proj.weight"], ref["model.layers.0.mlp.up_proj.weight"]]
        ),
    )


def test_repeated_build_reuses_cached_steps(
    artifact: pathlib.Path, tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "again"
    result = build(
        BuildOptions(arch="qwen2", model=str(tiny_hf("qwen2-untied")), out=out, progress=False)
    )
    assert set(result.reused) == {"convert", "compile-llvm"}
    for name in ("params_shard_0.bin", "tensor-cache.json", "source/qwen2_model.py"):
        assert _sha256(out / name) == _sha256(artifact / name)


def test_overwrite_replaces_only_after_success(
    tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old build")
    options = BuildOptions(
        arch="qwen2", model=str(tiny_hf("qwen2-untied")), out=out, overwrite=True, progress=False
    )
    build(options)
    assert not (out / "old.txt").exists()
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no staging leftovers
