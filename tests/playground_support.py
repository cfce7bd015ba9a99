"""Shared by the playground's browser tests: tiny WebGPU builds, link files and Python runs.

Builds are memoised here (not only by fixtures), so test modules that import this share them;
both models build in parallel (each WebGPU link is a minute or more of emscripten).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import threading
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

# name -> (arch, seed, config overrides). llama48 has hidden 48 (heterogeneous agents) with
# head_dim 16: TVM's WebGPU prefill kernel rejects head_dim 12 (4 heads of 48) and fails CSE with
# GQA 3:1, so it has 3 heads and 3 KV heads.
# The hd32 / hd64 models (hidden 64 with 2 heads / 1 head) give head_dim 32 and 64: prefill that
# continues a sequence was wrong on WebGPU for head_dim >= 32 (test_browser_chunked.py).
# Models built with 4-bit weights (the others: q0f32).
QUANTIZATION = {"tiny-qwen2-q4": "q4f32_1"}
MODELS: dict[str, tuple[str, int, dict[str, Any]]] = {
    "tiny-qwen2": ("qwen2", 0, {}),
    "tiny-llama48": (
        "llama",
        3,
        {
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_attention_heads": 3,
            "num_key_value_heads": 3,
        },
    ),
    "tiny-qwen2-hd32": ("qwen2", 5, {"num_attention_heads": 2, "num_key_value_heads": 1}),
    # hidden 64: every 4-bit matrix takes the hand-written q4 GEMV (k a multiple of 64)
    "tiny-qwen2-q4": ("qwen2", 7, {}),
    "tiny-qwen2-hd64": ("qwen2", 6, {"num_attention_heads": 1, "num_key_value_heads": 1}),
}

_lock = threading.Lock()
_built: dict[tuple[str, str], pathlib.Path] = {}  # (name, targets) -> artifact folder


def _share_toolchain() -> None:
    """Let the session's private build cache use an already built WebGPU toolchain (TVM's web
    runtime bitcode, 2.5 minutes to build) instead of building it again."""
    from mlcpatch.build.webgpu.toolchain import tvm_version

    if not os.environ.get("MLCPATCH_CACHE_DIR"):
        return  # builds use the shared cache itself
    session = pathlib.Path(os.environ["MLCPATCH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    name = f"tvm-web-{tvm_version()}"
    built = pathlib.Path(base) / "mlcpatch" / name
    if session.is_dir() and built.is_dir() and not (session / name).exists():
        (session / name).symlink_to(built, target_is_directory=True)


def build_models(
    root: pathlib.Path, names: list[str], targets: str = "llvm,webgpu"
) -> dict[str, pathlib.Path]:
    """Artifact folders root/<name> with the libraries of ``targets`` (by default CPU and
    WebGPU), built once per session and set of targets.

    $MLCPATCH_PLAYGROUND_ARTIFACTS names a folder holding them already (built from the same
    sources as below, for the same targets), to skip the builds while working on the page.
    """
    prebuilt = os.environ.get("MLCPATCH_PLAYGROUND_ARTIFACTS")
    if prebuilt:
        for name in names:
            if not (root / name).exists():
                root.mkdir(parents=True, exist_ok=True)
                shutil.copytree(pathlib.Path(prebuilt) / name, root / name)
            _built[name, targets] = root / name
    with _lock:
        missing = [n for n in names if (n, targets) not in _built]
        if missing:
            root.mkdir(parents=True, exist_ok=True)
            _share_toolchain()
            procs = {}
            for name in missing:
                arch, seed, overrides = MODELS[name]
                out = root / name
                if name == "tiny-qwen2":
                    source = "tiny-random"
                else:
                    from mlcpatch.build.tiny import write_tiny_model

                    hf = root / f"hf-{name}"
                    source = str(write_tiny_model(hf, arch, seed, config_overrides=overrides))
                cmd = [sys.executable, "-m", "mlcpatch.cli", "build", "--arch", arch]
                cmd += ["--model", source, "--target", targets, "--out", str(out), "-q"]
                cmd += ["--quant", QUANTIZATION.get(name, "q0f32")]
                log = open(root / f"build-{name}.log", "wb")  # noqa: SIM115 (closed below)
                procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
            for name, (proc, log) in procs.items():
                code = proc.wait(timeout=1800)
                log.close()
                if code != 0:
                    tail = (root / f"build-{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"building {name} failed:\n{tail}")
                _built[name, targets] = root / name
    # Callers serve `root`: a model built earlier for another module's root is copied in (the
    # server refuses symlinks that leave its root).
    for name in names:
        if _built[name, targets] != root / name and not (root / name).exists():
            root.mkdir(parents=True, exist_ok=True)
            shutil.copytree(_built[name, targets], root / name)
    return {n: root / n for n in names}


def linked_builds(tmp_path_factory: Any, names: list[str]) -> pathlib.Path:
    """A fresh folder holding copies of the session's builds of ``names`` (for tests that serve
    just those models; copies, since the server refuses symlinks that leave its root). Fails the
    test, naming the cause, without the WebGPU toolchain."""
    import pytest

    from mlcpatch.build.webgpu.toolchain import ToolchainError, find_toolchain

    try:
        find_toolchain()
    except ToolchainError as exc:
        pytest.fail(f"WebGPU toolchain unavailable: {exc}")
    built = build_models(tmp_path_factory.mktemp("webgpu-builds"), names)
    root = tmp_path_factory.mktemp("webgpu-artifacts")
    for name, folder in built.items():
        shutil.copytree(folder, root / name)
    return root


def broken_copy(source: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """An artifact folder whose WebGPU library is missing (listed, but fails to load)."""
    if not out.exists():
        shutil.copytree(source, out, ignore=shutil.ignore_patterns("*.wasm", "*.so"))
    return out


def open_agents(pattern_name: str, folders: list[pathlib.Path]) -> tuple[Any, list[Any]]:
    from mlcpatch.loop.backends import open_backend
    from mlcpatch.loop.orchestrator import Agent
    from mlcpatch.loop.patterns import load_pattern

    pattern = load_pattern(pattern_name)
    opened: dict[pathlib.Path, Any] = {}
    for folder in folders:
        opened.setdefault(folder, open_backend(str(folder)))
    return pattern, [Agent(r, opened[f]) for r, f in zip(pattern.agents, folders, strict=True)]


def write_links(pattern_name: str, folders: list[pathlib.Path], out: pathlib.Path) -> pathlib.Path:
    """The closed-form link file (links.json + links.safetensors in `out`)."""
    from mlcpatch.loop.export_links import save_fitted_links

    if not (out / "links.json").is_file():
        pattern, agents = open_agents(pattern_name, folders)
        save_fitted_links(pattern, agents, out)
    return out


def python_run(
    mode: str,
    pattern_name: str,
    folders: list[pathlib.Path],
    question: str,
    settings: dict[str, Any],
    links: pathlib.Path | None,
) -> dict[str, Any]:
    """mlcpatch.loop.orchestrator.run on the CPU runtime; RunResult.to_json()."""
    from mlcpatch.loop.orchestrator import Links, Settings, run

    pattern, agents = open_agents(pattern_name, folders)
    loaded = Links.load(links, pattern, agents) if mode == "latent" else None
    options = Settings(
        settings["rounds"],
        settings["latentSteps"],
        settings["maxNewTokens"],
        settings["textTokens"],
        share_prefix=False,  # the browser loop runs every prompt whole; count alike
    )
    return run(mode, pattern, agents, question, options, loaded).to_json()
