"""`mlcpatch build --backend mlc` against a fake MLC-LLM installation (tests/fakes/mlc.py).

Every build runs the real `mlcpatch` command in a subprocess, which runs the fake `mlc_llm` in
its own subprocesses: the commands, their order, the artifact, the manifest and what happens to
MLC-LLM's model file are all observed from outside.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fakes.mlc import FakeMlc, clean_env, install_fake_mlc

from mlcpatch.build.mlc.locate import script_interpreter
from mlcpatch.patcher import NOT_PATCHED, PATCHED, check_file

MLCPATCH = Path(sys.executable).with_name("mlcpatch")
# Nothing the build runs is looked up on PATH but mlc_llm and emcc (and this machine has an emcc).
SYSTEM_PATH = "/nonexistent-mlcpatch-test-bin"


@pytest.fixture
def fake_mlc(tmp_path: Path) -> FakeMlc:
    return install_fake_mlc(tmp_path / "mlc-venv")


@pytest.fixture
def model_dir(tiny_hf: Callable[[str], Path]) -> Path:
    return tiny_hf("qwen2-untied")


def _env(fake: FakeMlc | None, **changes: str | None) -> dict[str, str]:
    """The environment of a user with ``fake`` installed (its bin folder on PATH), or none."""
    search = f"{fake.bin_dir}:{SYSTEM_PATH}" if fake else SYSTEM_PATH
    log = str(fake.log) if fake else None
    return clean_env(PATH=search, FAKE_MLC_LOG=log, **changes)


def _mlcpatch(
    args: list[str], fake: FakeMlc | None, **env: str | None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MLCPATCH), *args], env=_env(fake, **env), capture_output=True, text=True, timeout=300
    )


def _build_args(model: Path, out: Path) -> list[str]:
    return ["build", "--backend=mlc", "--arch=qwen2", f"--model={model}", f"--out={out}"]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_leftovers(out: Path) -> None:
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_commands_layout_and_manifest(fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path) -> None:
    fake_mlc.add_emcc()
    bc_home = tmp_path / "mlc-src"
    (bc_home / "web/dist/wasm").mkdir(parents=True)
    (bc_home / "web/dist/wasm/mlc_wasm_runtime.bc").write_bytes(b"BC")
    original = fake_mlc.model_file.read_bytes()
    out = tmp_path / "art"
    args = _build_args(model_dir, out)
    args += ["--target", "llvm,webgpu", "--context-window", "256", "--prefill-chunk", "64"]
    done = _mlcpatch(args, fake_mlc, MLC_LLM_SOURCE_DIR=str(bc_home))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"built {out} in ")

    calls = fake_mlc.calls()
    stage = Path(calls[0]["argv"][-1])
    assert stage.parent == tmp_path and stage.name.startswith(".art.building-")
    model = str(model_dir.resolve())
    assert [c["argv"] for c in calls] == [
        ["convert_weight", model, "--quantization", "q0f32", "--model-type", "qwen2"]
        + ["-o", str(stage)],
        ["gen_config", model, "--quantization", "q0f32", "--model-type", "qwen2"]
        + ["--conv-template", "chatml", "--context-window-size", "256"]
        + ["--prefill-chunk-size", "64", "-o", str(stage)],
        ["compile", str(stage / "mlc-chat-config.json"), "--device", "llvm"]
        + ["-o", str(stage / "art-cpu.so")],
        ["compile", str(stage / "mlc-chat-config.json"), "--device", "webgpu"]
        + ["-o", str(stage / "art-webgpu.wasm")],
    ]
    # Every step ran the console script and saw the patched model file.
    assert {c["executable"] for c in calls} == {str(fake_mlc.executable)}
    assert all(c["model_file_patched"] for c in calls)
    # The fake's own output was streamed to the user.
    assert "[fake mlc_llm] Param: model.embed_tokens.weight" in done.stderr
    assert "[fake mlc_llm] Generated:" in done.stderr
    assert "warning" not in done.stderr

    # Afterwards MLC-LLM's file is back byte for byte, without backup files.
    assert fake_mlc.model_file.read_bytes() == original
    assert fake_mlc.backups() == []
    assert not stage.exists()
    _no_leftovers(out)

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "art-cpu.so",
        "art-webgpu.wasm",
        "chat_template.jinja",  # MLC-LLM does not copy these two; the build adds them
        "generation_config.json",
        "manifest.json",
        "mlc-chat-config.json",
        "params_shard_0.bin",
        "params_shard_1.bin",
        "params_shard_2.bin",
        "tensor-cache.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    chat = json.loads((out / "mlc-chat-config.json").read_text())
    assert chat["model_lib"] == {"llvm": "art-cpu.so", "webgpu": "art-webgpu.wasm"}
    assert chat["model_type"] == "qwen2" and chat["context_window_size"] == 256
    assert chat["tokenizer_files"] == [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "generation_config.json",
    ]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "mlc"
    assert manifest["tools"]["mlc-llm"] == "0.20.0" and manifest["tools"]["mlc-ai"] == "0.20.0"
    assert manifest["mlc_llm"]["version"] == "0.20.0"
    assert manifest["mlc_llm"]["package_dir"] == str(fake_mlc.package)
    commands = manifest["mlc_llm"]["commands"]
    assert [c[1:] for c in commands] == [c["argv"] for c in calls]
    assert {c[0] for c in commands} == {str(fake_mlc.executable)}
    assert manifest["mlc_llm"]["staging_dir"] == str(stage)
    patch = manifest["patch"]
    assert patch["after_build"] == "reverted" and patch["changed"] is True
    assert patch["model_file"] == str(fake_mlc.model_file)
    assert patch["class"] == "Qwen2LikeLMHeadModel"
    assert patch["functions_added"] == ["get_last_hidden", "decode_last_hidden"]
    assert patch["pristine_sha256"] == hashlib.sha256(original).hexdigest()
    assert patch["patched_sha256"] != patch["pristine_sha256"]
    assert manifest["options"]["targets"] == ["llvm", "webgpu"]
    assert manifest["options"]["context_window_size"] == 256
    assert manifest["options"]["prefill_chunk_size"] == 64
    assert manifest["libraries"] == chat["model_lib"]
    assert manifest["param_names"] == ["model.embed_tokens.weight", "model.norm.weight"] + [
        "lm_head.weight"
    ]
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    for rel, info in manifest["files"].items():
        assert info == {"size": (out / rel).stat().st_size, "sha256": _sha256(out / rel)}


def test_older_mlc_writes_ndarray_cache(model_dir: Path, tmp_path: Path) -> None:
    fake = install_fake_mlc(tmp_path / "mlc-venv", version="0.19.0")
    out = tmp_path / "old"
    done = _mlcpatch(_build_args(model_dir, out), fake)
    assert done.returncode == 0, done.stderr
    assert (out / "tensor-cache.json").read_bytes() == (out / "ndarray-cache.json").read_bytes()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tools"]["mlc-llm"] == "0.19.0"
    assert len(manifest["param_names"]) == 3
    assert {"tensor-cache.json", "ndarray-cache.json"} <= set(manifest["files"])
    # Without --target the recipe's (llvm) is built.
    assert [c["argv"][3] for c in fake.calls() if c["argv"][0] == "compile"] == ["llvm"]


def test_keep_patch_leaves_mlc_patched(fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path) -> None:
    original = fake_mlc.model_file.read_bytes()
    out = tmp_path / "kept"
    done = _mlcpatch([*_build_args(model_dir, out), "--keep-patch"], fake_mlc)
    assert done.returncode == 0, done.stderr
    assert check_file(fake_mlc.model_file).code == PATCHED
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["patch"]["after_build"] == "kept"
    assert manifest["patch"]["patched_sha256"] == _sha256(fake_mlc.model_file)
    assert manifest["options"]["keep_patch"] is True
    # The patch stays undoable the usual way, back to the original bytes.
    undo = _mlcpatch(
        ["patch", "qwen2", "--source", "mlc", "--revert"], None, MLCPATCH_MLC_LLM=str(fake_mlc.site)
    )
    assert undo.returncode == 0, undo.stderr
    assert fake_mlc.model_file.read_bytes() == original


@pytest.mark.parametrize(
    ("failing", "ran"),
    [("convert_weight", 1), ("gen_config", 2), ("compile", 3)],
)
def test_failing_step_reverts_and_writes_nothing(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path, failing: str, ran: int
) -> None:
    original = fake_mlc.model_file.read_bytes()
    out = tmp_path / "art"
    done = _mlcpatch(_build_args(model_dir, out), fake_mlc, FAKE_MLC_FAIL=failing)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    error = errors[0]
    assert f"mlc_llm {failing} failed (exit code 1): {fake_mlc.executable} {failing} " in error
    assert error.endswith(f"last output: ValueError: fake {failing} failure"), error
    assert "Traceback" not in error
    assert [c["argv"][0] for c in fake_mlc.calls()] == ["convert_weight", "gen_config"][:ran] + (
        ["compile"] if ran == 3 else []
    )
    assert fake_mlc.calls()[-1]["model_file_patched"]
    assert fake_mlc.model_file.read_bytes() == original
    assert fake_mlc.backups() == []
    assert not out.exists()
    _no_leftovers(out)


def test_failing_step_with_keep_patch_keeps_it(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "art"
    args = [*_build_args(model_dir, out), "--keep-patch"]
    done = _mlcpatch(args, fake_mlc, FAKE_MLC_FAIL="compile")
    assert done.returncode == 2 and "mlc_llm compile failed" in done.stderr
    assert check_file(fake_mlc.model_file).code == PATCHED
    assert not out.exists()


def test_patched_before_the_build_is_left_alone(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    patch = _mlcpatch(
        ["patch", "qwen2", "--source", "mlc"], None, MLCPATCH_MLC_LLM=str(fake_mlc.site)
    )
    assert patch.returncode == 0, patch.stderr
    patched = fake_mlc.model_file.read_bytes()
    backups = fake_mlc.backups()
    out = tmp_path / "art"
    done = _mlcpatch(_build_args(model_dir, out), fake_mlc)
    assert done.returncode == 0, done.stderr
    assert fake_mlc.model_file.read_bytes() == patched
    assert fake_mlc.backups() == backups
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["patch"]["was_patched_before"] is True
    assert manifest["patch"]["after_build"] == "left as found (patched before the build)"


def test_python_m_mlc_llm_when_no_command_on_path(model_dir: Path, tmp_path: Path) -> None:
    """No `mlc_llm` on PATH, but this interpreter finds the package: `python -m mlc_llm`."""
    fake = install_fake_mlc(tmp_path / "mlc-venv", console_script=False, dist_info=False)
    original = fake.model_file.read_bytes()
    out = tmp_path / "art"
    done = _mlcpatch(_build_args(model_dir, out), fake, PYTHONPATH=str(fake.site))
    assert done.returncode == 0, done.stderr
    assert {c["executable"] for c in fake.calls()} == {str(fake.package / "__main__.py")}
    assert all(c["model_file_patched"] for c in fake.calls())
    manifest = json.loads((out / "manifest.json").read_text())
    assert {tuple(c[:3]) for c in manifest["mlc_llm"]["commands"]} == {
        (script_interpreter(MLCPATCH), "-m", "mlc_llm")  # the Python that runs mlcpatch
    }
    assert manifest["tools"]["mlc-llm"] == "0.1.dev0 (source tree)"
    assert fake.model_file.read_bytes() == original


def test_missing_mlc_llm_points_to_builtin_and_install(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    done = _mlcpatch(_build_args(model_dir, out), None)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: MLC-LLM is not installed")
    assert "--backend builtin" in error
    assert "https://llm.mlc.ai/docs/install/mlc_llm" in error and "https://mlc.ai/wheels" in error
    assert not out.exists()


def test_unknown_mlc_arch_lists_mlc_models(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    args = _build_args(model_dir, tmp_path / "art")
    args[args.index("--arch=qwen2")] = "--arch=gemma9"
    done = _mlcpatch(args, fake_mlc)
    assert done.returncode == 2
    assert re.search(
        r"Error: MLC-LLM \(.*mlc_llm\) has no model 'gemma9'; its models: qwen2$",
        done.stderr.strip(),
    ), done.stderr
    assert fake_mlc.calls() == []


def test_webgpu_needs_emcc(fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path) -> None:
    original = fake_mlc.model_file.read_bytes()
    done = _mlcpatch([*_build_args(model_dir, tmp_path / "art"), "--target", "webgpu"], fake_mlc)
    assert done.returncode == 2
    assert "needs emscripten: no `emcc` on PATH" in done.stderr
    assert fake_mlc.calls() == []
    assert fake_mlc.model_file.read_bytes() == original


def test_target_without_an_mlc_device_is_refused(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    done = _mlcpatch([*_build_args(model_dir, tmp_path / "art"), "--target", "cuda"], fake_mlc)
    assert done.returncode == 2 and "unknown target 'cuda'" in done.stderr
    assert fake_mlc.calls() == [] and check_file(fake_mlc.model_file).code == NOT_PATCHED


def test_keep_patch_needs_the_mlc_backend(model_dir: Path, tmp_path: Path) -> None:
    args = ["build", "--arch", "qwen2", "--model", str(model_dir), "--keep-patch"]
    done = _mlcpatch([*args, "--out", str(tmp_path / "art")], None)
    assert done.returncode == 2
    assert "--keep-patch only applies to --backend mlc" in done.stderr


def test_existing_output_is_refused_before_patching(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "art"
    out.mkdir()
    done = _mlcpatch(_build_args(model_dir, out), fake_mlc)
    assert done.returncode == 2 and "already exists; pass --overwrite" in done.stderr
    assert fake_mlc.calls() == [] and check_file(fake_mlc.model_file).code == NOT_PATCHED
    assert os.listdir(out) == []


def test_terminated_build_reverts_and_writes_nothing(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM while mlc_llm compile runs: the step is killed, the patch reverted, no output."""
    original = fake_mlc.model_file.read_bytes()
    out = tmp_path / "art"
    proc = subprocess.Popen(
        [str(MLCPATCH), *_build_args(model_dir, out)],
        env=_env(fake_mlc, FAKE_MLC_HANG="compile"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not [c for c in fake_mlc.calls() if c["argv"][0] == "compile"]:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    assert check_file(fake_mlc.model_file).code == PATCHED
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert fake_mlc.model_file.read_bytes() == original
    assert fake_mlc.backups() == []
    assert not out.exists()
    _no_leftovers(out)


def test_interpreter_of_a_console_script(tmp_path: Path) -> None:
    def script(name: str, text: str | bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    assert script_interpreter(script("a", "#!/opt/venv/bin/python3.12\nimport x\n")) == (
        "/opt/venv/bin/python3.12"
    )
    long_form = "#!/bin/sh\n'''exec' \"/a b/venv/bin/python\" \"$0\" \"$@\"\n' '''\nimport x\n"
    assert script_interpreter(script("b", long_form)) == "/a b/venv/bin/python"
    env_form = script("c", "#!/usr/bin/env python3\n")
    assert script_interpreter(env_form) == shutil.which("python3")
    assert script_interpreter(script("d", "#!/bin/bash\nexec foo\n")) is None
    assert script_interpreter(script("e", b"\x7fELF\x02\x01")) is None
    assert script_interpreter(tmp_path / "missing") is None


def test_model_file_edited_during_the_build_is_not_reverted_blindly(
    fake_mlc: FakeMlc, model_dir: Path, tmp_path: Path
) -> None:
    """The patcher refuses to revert an edited file; the build says so and how to force it."""
    out = tmp_path / "art"
    done = _mlcpatch(_build_args(model_dir, out), fake_mlc, FAKE_MLC_EDIT_MODEL="gen_config")
    assert done.returncode == 2
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: the build finished but reverting the patch of "), error
    assert error.endswith(f"undo it with: mlcpatch patch {fake_mlc.model_file} --revert --force")
    assert fake_mlc.model_file.read_text().endswith("# edited while mlc_llm ran\n")
    assert not out.exists()
    _no_leftovers(out)


def test_warnings_for_an_old_mlc_and_a_missing_wasm_runtime(
    model_dir: Path, tmp_path: Path
) -> None:
    fake = install_fake_mlc(tmp_path / "mlc-venv", version="0.16.2")
    fake.add_emcc()
    out = tmp_path / "art"
    done = _mlcpatch([*_build_args(model_dir, out), "--target", "webgpu"], fake)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2, done.stderr
    assert "MLC-LLM 0.16.2 is older than 0.17" in warnings[0]
    assert "looks for mlc_wasm_runtime.bc in web/dist/wasm/mlc_wasm_runtime.bc" in warnings[1]
    assert (out / "art-webgpu.wasm").is_file()
