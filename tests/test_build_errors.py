"""Bad inputs give one clear error and leave nothing half-written."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from mlcpatch.build.artifact import OutputExistsError
from mlcpatch.build.convert import WeightMismatchError
from mlcpatch.build.hf_weights import WeightFormatError
from mlcpatch.build.pipeline import BuildError, BuildOptions, build
from mlcpatch.build.source import SourceError
from mlcpatch.build.targets import parse_targets
from mlcpatch.cli import main
from mlcpatch.runtime import ArtifactError, Runtime


def _copy_model(tiny_hf: Callable[[str], pathlib.Path], dest: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(tiny_hf("qwen2-untied"), dest))


def _edit_config(folder: pathlib.Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def _assert_nothing_written(parent: pathlib.Path, out: pathlib.Path) -> None:
    assert not out.exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]


def _build(model: pathlib.Path | str, out: pathlib.Path, arch: str = "qwen2") -> None:
    build(BuildOptions(arch=arch, model=str(model), out=out, progress=False))


def test_unknown_arch_cli(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["build", "--arch", "gpt9", "--model", "tiny-random", "--out", str(out)]
    )
    assert result.exit_code != 0
    assert "unknown architecture 'gpt9'" in result.output
    assert "Traceback" not in result.output
    _assert_nothing_written(tmp_path, out)


@pytest.mark.heavy
def test_config_shapes_disagree_with_weights(tiny_hf: Callable, tmp_path: pathlib.Path) -> None:
    model = _copy_model(tiny_hf, tmp_path / "model")
    _edit_config(model, intermediate_size=96)
    out = tmp_path / "out"
    with pytest.raises(WeightMismatchError, match=r"mlp.gate_up_proj.weight should be \[192, 64\]"):
        _build(model, out)
    _assert_nothing_written(tmp_path, out)


@pytest.mark.heavy
def test_config_with_fewer_layers_than_weights(tiny_hf: Callable, tmp_path: pathlib.Path) -> None:
    model = _copy_model(tiny_hf, tmp_path / "model")
    _edit_config(model, num_hidden_layers=1)
    out = tmp_path / "out"
    with pytest.raises(WeightMismatchError, match=r"unused by the model: model\.layers\.1\."):
        _build(model, out)
    _assert_nothing_written(tmp_path, out)


def test_missing_weight_files(tiny_hf: Callable, tmp_path: pathlib.Path) -> None:
    model = _copy_model(tiny_hf, tmp_path / "model")
    (model / "model.safetensors").unlink()
    out = tmp_path / "out"
    with pytest.raises(WeightFormatError, match="no weight files"):
        _build(model, out)
    _assert_nothing_written(tmp_path, out)


def test_missing_shard_of_sharded_checkpoint(tiny_hf: Callable, tmp_path: pathlib.Path) -> None:
    model = _copy_model(tiny_hf, tmp_path / "model")
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors",
        },
    }
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(WeightFormatError, match="model-00002-of-00002.safetensors"):
        _build(model, tmp_path / "out")


def test_missing_config(tmp_path: pathlib.Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no config.json"):
        _build(tmp_path / "empty", tmp_path / "out")


def test_source_not_found(tmp_path: pathlib.Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        _build(tmp_path / "nowhere", tmp_path / "out")


def test_arch_does_not_match_model_type(tiny_hf: Callable, tmp_path: pathlib.Path) -> None:
    with pytest.raises(BuildError, match="model_type='qwen2'.*'llama'"):
        _build(tiny_hf("qwen2-untied"), tmp_path / "out", arch="llama")


def test_existing_output_is_refused_and_kept(tiny_hf: Callable, tmp_path: pathlib.Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _build(tiny_hf("qwen2-untied"), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = CliRunner().invoke(
        main,
        ["build", "--arch", "qwen2", "--model", str(tiny_hf("qwen2-untied")), "--out", str(out)],
    )
    assert result.exit_code != 0
    assert "already exists; pass --overwrite" in result.output


def test_target_parsing() -> None:
    assert [t.name for t in parse_targets("llvm, llvm")] == ["llvm"]
    assert [t.name for t in parse_targets("llvm,webgpu")] == ["llvm", "webgpu"]
    specs = parse_targets("wasm,llvm,webgpu")
    assert [t.name for t in specs] == ["wasm", "llvm", "webgpu"]
    # Each target writes its own file: the wasm CPU library never overwrites another.
    assert len({t.lib_suffix for t in specs}) == 3
    with pytest.raises(ValueError, match="unknown target 'cuda'"):
        parse_targets("cuda")
    with pytest.raises(ValueError, match="no compile target"):
        parse_targets(" , ")


def test_cpu_option() -> None:
    from mlcpatch.cpu_features import native_cpu

    (llvm,) = parse_targets("llvm", cpu="x86-64-v3")
    assert llvm.make_target().attrs["mcpu"] == "x86-64-v3"
    (native,) = parse_targets("llvm", cpu="native")
    assert native.make_target().attrs.get("mcpu") == (
        None if native_cpu() == "portable" else native_cpu()
    )
    # The default is native; portable leaves -mcpu out.
    assert parse_targets("llvm")[0].make_target().attrs.get(
        "mcpu"
    ) == native.make_target().attrs.get("mcpu")
    assert "mcpu" not in parse_targets("llvm", cpu="portable")[0].make_target().attrs
    llvm, webgpu = parse_targets("llvm,webgpu", cpu="x86-64-v3")
    assert "mcpu" not in webgpu.make_target().host.attrs
    with pytest.raises(ValueError, match="unknown CPU 'pentium-9000'"):
        parse_targets("llvm", cpu="pentium-9000")
    # Asked for explicitly without an llvm target: refused; left at its default: no matter.
    with pytest.raises(ValueError, match="--cpu applies to the llvm target"):
        parse_targets("webgpu", cpu="native")
    assert [s.name for s in parse_targets("webgpu")] == ["webgpu"]


def test_unknown_quantization(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "build",
            "--arch",
            "qwen2",
            "--model",
            "tiny-random",
            "--quant",
            "q3f16_0",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code != 0
    assert "unknown quantization 'q3f16_0'" in result.output
    assert "q0f32, q0f16, q4f32_1, q4f16_1" in result.output


def test_corrupted_shard_is_detected_on_load(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    artifact = pathlib.Path(shutil.copytree(built("qwen2-untied"), tmp_path / "art"))
    shard = artifact / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="params_shard_0.bin: sha256 mismatch"):
        Runtime(artifact)
    result = CliRunner().invoke(main, ["generate", str(artifact), "--prompt", "hi"])
    assert result.exit_code != 0
    assert "sha256 mismatch" in result.output and "Traceback" not in result.output


def test_truncated_shard_is_detected_on_load(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    artifact = pathlib.Path(shutil.copytree(built("qwen2-untied"), tmp_path / "art"))
    shard = artifact / "params_shard_0.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"params_shard_0.bin: \d+ bytes, manifest says"):
        Runtime(artifact)


def test_not_an_artifact_folder(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Runtime(tmp_path)


def test_prefill_chunk_as_long_as_the_sliding_window_is_refused(
    tiny_hf: Callable, tmp_path: pathlib.Path
) -> None:
    """gemma3's window kernels need shorter prefill chunks: refused before compiling."""
    out = tmp_path / "out"
    options = BuildOptions(
        arch="gemma3",
        model=str(tiny_hf("gemma3-softcap-linear")),
        out=out,
        prefill_chunk_size=16,
        progress=False,
    )
    with pytest.raises(BuildError, match="prefill_chunk_size 16 is not shorter than .* window"):
        build(options)
    _assert_nothing_written(tmp_path, out)


def test_sliding_window_beyond_the_window_is_cpu_only(
    tiny_hf: Callable, tmp_path: pathlib.Path
) -> None:
    """TVM's WebGPU window kernels differ from transformers: refused when exporting."""
    out = tmp_path / "out"
    options = BuildOptions(
        arch="gemma3",
        model=str(tiny_hf("gemma3-softcap-linear")),
        out=out,
        targets="webgpu",
        progress=False,
    )
    with pytest.raises(ValueError, match="exact only in CPU .*--context-window-size 16"):
        build(options)
    _assert_nothing_written(tmp_path, out)


@pytest.mark.heavy
def test_head_dim_webgpu_kernels_cannot_tile_is_refused_before_converting(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """head_dim 12 (hidden 48, 4 heads): TVM's WebGPU prefill kernel cannot tile it. With
    --target llvm,webgpu the build names the head_dim before converting or compiling anything."""
    from mlcpatch.build.tiny import write_tiny_model

    model = write_tiny_model(
        tmp_path / "hd12",
        "llama",
        seed=3,
        config_overrides={"hidden_size": 48, "num_attention_heads": 4, "num_key_value_heads": 4},
    )
    cache = tmp_path / "cache"
    monkeypatch.setenv("MLCPATCH_CACHE_DIR", str(cache))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["build", "--arch", "llama", "--model", str(model), "--out", str(out)]
        + ["--target", "llvm,webgpu", "--quiet"],
    )
    assert result.exit_code != 0
    assert "head_dim 12 (4 query / 4 key-value heads) is not supported" in result.output
    assert "webgpu attention kernels" in result.output
    assert "Traceback" not in result.output
    _assert_nothing_written(tmp_path, out)
    # Refused at planning: no converted weights and no CPU library reached the step cache.
    assert not (cache / "convert").exists() and not (cache / "compile-llvm").exists()

    # The same model builds for the CPU, which has no such tiling.
    cpu = tmp_path / "cpu"
    result = CliRunner().invoke(
        main, ["build", "--arch", "llama", "--model", str(model), "--out", str(cpu), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    assert (cpu / "manifest.json").is_file()


@pytest.mark.heavy
def test_tvm_compile_failure_names_target_and_attention_shape(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TVM 0.27's WebGPU prefill kernels fail an internal check (a CSE variable used before
    its definition) for head_dim 16 with 3 query heads per key-value head. The build says which
    target and shape it was compiling, in one line, and leaves nothing behind."""
    from mlcpatch.build.tiny import write_tiny_model

    model = write_tiny_model(
        tmp_path / "gqa3",
        "llama",
        seed=3,
        config_overrides={"hidden_size": 48, "num_attention_heads": 3, "num_key_value_heads": 1},
    )
    monkeypatch.setenv("MLCPATCH_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["build", "--arch", "llama", "--model", str(model), "--out", str(out)]
        + ["--target", "webgpu", "--quiet"],
    )
    assert result.exit_code != 0
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: TVM failed compiling the webgpu library")
    assert "(head_dim 16, 3 query / 1 key-value heads)" in message
    assert "used before definition" in message
    assert "Traceback" not in result.output
    _assert_nothing_written(tmp_path, out)
    assert not (tmp_path / "cache" / "compile-webgpu").exists()


def _edit_json(path: pathlib.Path, change: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _relist(artifact: pathlib.Path, name: str) -> None:
    """Keep the manifest's entry for an edited file right, so only the edit is wrong."""
    import hashlib

    body = (artifact / name).read_bytes()
    entry = {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    _edit_json(artifact / "manifest.json", lambda m: m["files"].__setitem__(name, entry))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("files"), 'no "files" table'),
        (lambda m: m.__setitem__("files", {}), 'no "files" table'),
        (lambda m: m.__setitem__("files", ["params_shard_0.bin"]), 'no "files" table'),
        (lambda m: m["files"].pop("params_shard_0.bin"), "does not list params_shard_0.bin"),
        (lambda m: m["files"].pop("tensor-cache.json"), "does not list tensor-cache.json"),
        (lambda m: m["files"].__setitem__("../x", {"size": 1, "sha256": "0" * 64}), "'../x'"),
        (lambda m: m["files"].__setitem__("a", {"size": "1", "sha256": "0" * 64}), "integer size"),
    ],
)
def test_a_manifest_that_covers_too_little_is_refused(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path, change: Callable, message: str
) -> None:
    artifact = pathlib.Path(shutil.copytree(built("qwen2-untied"), tmp_path / "art"))
    _edit_json(artifact / "manifest.json", change)
    for verify in (True, False):  # skipping the hashes never skips the structure
        with pytest.raises(ArtifactError, match=re.escape(message)):
            Runtime(artifact, verify=verify)
    result = CliRunner().invoke(main, ["generate", str(artifact), "--prompt", "hi"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_a_library_without_a_manifest_entry_is_refused(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    artifact = pathlib.Path(shutil.copytree(built("qwen2-untied"), tmp_path / "art"))
    library = json.loads((artifact / "mlc-chat-config.json").read_text())["model_lib"]["llvm"]
    _edit_json(artifact / "manifest.json", lambda m: m["files"].pop(library))
    with pytest.raises(ArtifactError, match=f"does not list {re.escape(library)}"):
        Runtime(artifact)


@pytest.mark.parametrize("where", ["library", "shard"])
@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.bin", "sub/../../outside.bin"])
def test_paths_that_leave_the_folder_are_refused(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path, where: str, name: str
) -> None:
    artifact = pathlib.Path(shutil.copytree(built("qwen2-untied"), tmp_path / "art"))
    (tmp_path / "outside.bin").write_bytes(b"not yours")
    if where == "library":
        target = "mlc-chat-config.json"
        _edit_json(artifact / target, lambda c: c["model_lib"].__setitem__("llvm", name))
    else:
        target = "tensor-cache.json"
        _edit_json(artifact / target, lambda c: c["records"][0].__setitem__("dataPath", name))
    _relist(artifact, target)
    with pytest.raises(ArtifactError, match="not a relative path inside the folder"):
        Runtime(artifact, verify=False)


def test_a_symlink_out_of_the_folder_is_refused(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    artifact = pathlib.Path(shutil.copytree(built("qwen2-untied"), tmp_path / "art"))
    shard = artifact / "params_shard_0.bin"
    outside = tmp_path / "elsewhere.bin"
    shard.rename(outside)
    shard.symlink_to(outside)
    with pytest.raises(ArtifactError, match="leads outside the folder"):
        Runtime(artifact, verify=False)


def test_wasm_target_is_wasm32_cpu_with_simd() -> None:
    (spec,) = parse_targets("wasm")
    target = spec.make_target()
    assert target.kind.name == "llvm"  # every kernel on the CPU, no device code
    assert target.attrs["mtriple"] == "wasm32-unknown-unknown-wasm"
    assert "+simd128" in list(target.attrs["mattr"])
    assert spec.lib_suffix == "-cpu.wasm"
