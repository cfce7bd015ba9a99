"""`mlcpatch build --backend mlc`: build the artifact folder with an installed MLC-LLM.

The model definition MLC-LLM itself ships is patched in place (the same code path as
``mlcpatch patch ARCH --source mlc``), MLC-LLM's own command line does the work::

    mlc_llm convert_weight MODEL_DIR --quantization Q --model-type ARCH -o STAGE
    mlc_llm gen_config MODEL_DIR --quantization Q --model-type ARCH --conv-template T
        [--context-window-size N] [--prefill-chunk-size N] -o STAGE
    mlc_llm compile STAGE/mlc-chat-config.json --device D -o STAGE/<name><suffix>   (per target)

and the patch is reverted afterwards (also when a step fails) unless ``--keep-patch``. The result
has the builtin backend's layout: ``mlc-chat-config.json`` (MLC's, plus ``model_lib``), tokenizer
files, ``tensor-cache.json`` + ``params_shard_*.bin``, the libraries and ``manifest.json``.

Written against MLC-LLM's CLI (python/mlc_llm/cli/*.py) at v0.17.1, v0.19.0, v0.20.0 and main at
the time of writing: every flag used here exists, with the same meaning, in all four.
``--model-type`` pins MLC-LLM to the model file that was patched (its automatic detection could
pick another). MLC-LLM up to 0.19 names the weight index ``ndarray-cache.json``, from 0.20 on
``tensor-cache.json``; both are accepted and the artifact always carries ``tensor-cache.json``
(the older name is kept beside it for MLC's own tools of that age).

Modules, one job each: ``locate`` (finding MLC-LLM), ``patching`` (its model file patched in
place around the build), ``process`` (running ``mlc_llm``), ``errors``; this one runs the build.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlcpatch.artifact import CHAT_CONFIG, TENSOR_CACHE, write_manifest
from mlcpatch.build.artifact import TOKENIZER_FILES, OutputExistsError, staging_dir
from mlcpatch.build.mlc.errors import MlcBuildError
from mlcpatch.build.mlc.locate import MlcInstall, find_mlc_llm
from mlcpatch.build.mlc.patching import patched_model
from mlcpatch.build.mlc.process import run_step, terminate_as_exit
from mlcpatch.build.source import resolve_source
from mlcpatch.build.targets import parse_targets
from mlcpatch.patcher.resolve import mlc_archs

EMCC_URL = "https://llm.mlc.ai/docs/install/emcc.html"
OLDEST_VERSION = (0, 17)  # the oldest MLC-LLM whose CLI this was written against
OLD_TENSOR_CACHE = "ndarray-cache.json"  # MLC-LLM <= 0.19
WASM_RUNTIME_BC = Path("web", "dist", "wasm", "mlc_wasm_runtime.bc")


@dataclasses.dataclass(frozen=True)
class MlcDevice:
    """How one of our targets is asked of `mlc_llm compile`."""

    device: str  # --device value
    note: str


# Our target name -> MLC-LLM device. "llvm" (not "cpu") because MLC-LLM 0.17 has no "cpu" device
# and every version turns "llvm" into a generic LLVM target, as our builtin llvm target is.
# "webgpu" is MLC-LLM's "webgpu:generic" preset (wasm32 host, linked with emscripten).
MLC_DEVICES: dict[str, MlcDevice] = {
    "llvm": MlcDevice("llvm", "CPU shared library"),
    "webgpu": MlcDevice("webgpu", "WebGPU .wasm (needs emcc and mlc_wasm_runtime.bc)"),
}


@dataclasses.dataclass
class MlcBuildOptions:
    arch: str  # an arch name of MLC-LLM's model registry (qwen2, llama, gemma2, ...)
    model: str
    quantization: str = "q0f32"
    targets: str = "llvm"
    out: Path | None = None
    name: str | None = None
    context_window_size: int | None = None
    prefill_chunk_size: int | None = None
    conv_template: str | None = None
    overwrite: bool = False
    keep_patch: bool = False
    progress: bool = True  # stream mlc_llm's output (and our step lines) to stderr


def mlc_options(build_options: Any, *, keep_patch: bool = False) -> MlcBuildOptions:
    """MlcBuildOptions from the builtin backend's BuildOptions (the fields both share), so the
    command resolves recipe defaults once for both backends."""
    shared = {
        f.name: getattr(build_options, f.name)
        for f in dataclasses.fields(MlcBuildOptions)
        if hasattr(build_options, f.name)
    }
    return MlcBuildOptions(**{**shared, "keep_patch": keep_patch})


@dataclasses.dataclass
class MlcBuildResult:
    out: Path
    name: str
    seconds: dict[str, float]
    reused: list[str]  # always empty: MLC-LLM steps are not cached by mlcpatch
    commands: list[list[str]]
    patch: dict[str, Any]


def _devices(targets: str) -> list[tuple[str, MlcDevice, str]]:
    """(our target name, MLC device, library suffix) for ``--target``, in order."""
    found = []
    for spec in parse_targets(targets):
        if spec.name not in MLC_DEVICES:
            raise MlcBuildError(
                f"target {spec.name!r} is not supported with --backend mlc "
                f"(supported: {', '.join(MLC_DEVICES)})"
            )
        found.append((spec.name, MLC_DEVICES[spec.name], spec.lib_suffix))
    return found


def _check_webgpu_tools(log: Callable[[str], None]) -> None:
    if shutil.which("emcc") is None:
        raise MlcBuildError(
            "--target webgpu with --backend mlc needs emscripten: no `emcc` on PATH "
            f"(MLC-LLM links the .wasm with it; see {EMCC_URL})"
        )
    candidates = [WASM_RUNTIME_BC]
    if os.environ.get("MLC_LLM_SOURCE_DIR"):
        candidates.append(Path(os.environ["MLC_LLM_SOURCE_DIR"]) / WASM_RUNTIME_BC)
    if not any(c.is_file() for c in candidates):
        log(
            "warning: mlc_llm compile --device webgpu looks for mlc_wasm_runtime.bc in "
            f"{' and '.join(str(c) for c in candidates)} and none is there; build it with "
            "./web/prep_emcc_deps.sh in an MLC-LLM checkout and export MLC_LLM_SOURCE_DIR"
        )


def _conv_template(opts: MlcBuildOptions) -> str:
    if opts.conv_template:
        return opts.conv_template
    from mlcpatch.models.registry import BUILTIN_ARCHS

    if opts.arch in BUILTIN_ARCHS:
        return BUILTIN_ARCHS[opts.arch].default_conv_template
    raise MlcBuildError(
        f"--conv-template is needed for {opts.arch!r} with --backend mlc (mlc_llm gen_config "
        "requires one: chatml, llama-3, qwen2, gemma_instruction, ...)"
    )


def _param_names(cache: dict[str, Any]) -> list[str]:
    return [p["name"] for shard in cache.get("records", []) for p in shard.get("records", [])]


def _normalize_tensor_cache(stage: Path) -> dict[str, Any]:
    """Make sure ``tensor-cache.json`` exists (MLC-LLM <= 0.19 writes ndarray-cache.json)."""
    if not (stage / TENSOR_CACHE).is_file():
        if not (stage / OLD_TENSOR_CACHE).is_file():
            raise MlcBuildError(
                f"mlc_llm convert_weight wrote neither {TENSOR_CACHE} nor {OLD_TENSOR_CACHE}"
            )
        shutil.copyfile(stage / OLD_TENSOR_CACHE, stage / TENSOR_CACHE)
    if not list(stage.glob("params_shard_*.bin")):
        raise MlcBuildError("mlc_llm convert_weight wrote no params_shard_*.bin")
    try:
        return json.loads((stage / TENSOR_CACHE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MlcBuildError(f"{TENSOR_CACHE} written by mlc_llm is not valid JSON: {exc}") from exc


def _finish_chat_config(
    stage: Path, source_folder: Path, libraries: dict[str, str]
) -> dict[str, Any]:
    """MLC's mlc-chat-config.json plus what our runtimes read: ``model_lib`` and the tokenizer
    files MLC-LLM does not copy (chat_template.jinja, generation_config.json, ...)."""
    path = stage / CHAT_CONFIG
    try:
        chat = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MlcBuildError(f"mlc_llm gen_config wrote no usable {CHAT_CONFIG}: {exc}") from exc
    files = list(chat.get("tokenizer_files", []))
    for name in TOKENIZER_FILES:
        if (source_folder / name).is_file() and not (stage / name).exists():
            shutil.copyfile(source_folder / name, stage / name)
            files.append(name)
    chat["tokenizer_files"] = files
    chat["model_lib"] = libraries
    path.write_text(json.dumps(chat, indent=2) + "\n", encoding="utf-8")
    return chat


def _tool_versions(install: MlcInstall) -> dict[str, str]:
    import platform

    versions = {"python": platform.python_version(), "mlc-llm": install.version}
    if install.tvm_version:
        versions["mlc-ai"] = install.tvm_version
    try:
        versions["recursivemas-webgpu"] = importlib.metadata.version("recursivemas-webgpu")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


def _stderr_log(enabled: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if enabled:
            sys.stderr.write(f"[mlcpatch] {message}\n")
            sys.stderr.flush()

    return log


def build_mlc(opts: MlcBuildOptions) -> MlcBuildResult:
    """Build the artifact folder with MLC-LLM; raises MlcBuildError (or a ValueError subclass
    from the shared steps) with a one-line message. Nothing is left at ``out`` on failure and
    MLC-LLM's model file is restored unless ``keep_patch``."""
    seconds: dict[str, float] = {}
    log = _stderr_log(opts.progress)
    start = time.perf_counter()
    install = find_mlc_llm()
    log(f"MLC-LLM {install.version}: {shlex.join(install.command)} ({install.package_dir})")
    numbers = re.match(r"(\d+)\.(\d+)", install.version)
    if numbers and (int(numbers[1]), int(numbers[2])) < OLDEST_VERSION:
        log(
            f"warning: MLC-LLM {install.version} is older than 0.17, the oldest version whose "
            "command line this backend was written against"
        )
    archs = mlc_archs(install.package_dir)
    if opts.arch not in archs:
        known = ", ".join(sorted(archs)) or "none"
        raise MlcBuildError(
            f"MLC-LLM ({install.package_dir}) has no model {opts.arch!r}; its models: {known}"
        )
    found = archs[opts.arch]
    devices = _devices(opts.targets)
    conv_template = _conv_template(opts)
    if any(name == "webgpu" for name, _, _ in devices):
        _check_webgpu_tools(log)
    source = resolve_source(opts.model, opts.arch)
    source.config()  # a folder without a readable config.json fails here, not inside MLC-LLM
    name = opts.name or (opts.out.name if opts.out else f"{source.name}-{opts.quantization}")
    out = opts.out or Path("artifacts") / name
    if out.exists() and not opts.overwrite:
        raise OutputExistsError(str(out))
    seconds["source"] = round(time.perf_counter() - start, 3)

    commands: list[list[str]] = []
    libraries: dict[str, str] = {}

    def step(key: str, args: list[str]) -> None:
        argv = [*install.command, *args]
        commands.append(argv)
        log(f"running {shlex.join(argv)}")
        begin = time.perf_counter()
        run_step(argv, echo=opts.progress)
        seconds[key] = round(time.perf_counter() - begin, 3)

    model_dir = str(source.folder.resolve())
    with terminate_as_exit(), staging_dir(out, opts.overwrite) as stage:
        stage_dir = stage.resolve()
        with patched_model(found, opts.keep_patch, log) as patch_status:
            step(
                "convert_weight",
                ["convert_weight", model_dir, "--quantization", opts.quantization]
                + ["--model-type", opts.arch, "-o", str(stage_dir)],
            )
            cache = _normalize_tensor_cache(stage)
            gen = ["gen_config", model_dir, "--quantization", opts.quantization]
            gen += ["--model-type", opts.arch, "--conv-template", conv_template]
            if opts.context_window_size:
                gen += ["--context-window-size", str(opts.context_window_size)]
            if opts.prefill_chunk_size:
                gen += ["--prefill-chunk-size", str(opts.prefill_chunk_size)]
            step("gen_config", [*gen, "-o", str(stage_dir)])
            if not (stage / CHAT_CONFIG).is_file():
                raise MlcBuildError(f"mlc_llm gen_config wrote no {CHAT_CONFIG}")
            for target, device, suffix in devices:
                lib_name = f"{name}{suffix}"
                step(
                    f"compile-{target}",
                    ["compile", str(stage_dir / CHAT_CONFIG), "--device", device.device]
                    + ["-o", str(stage_dir / lib_name)],
                )
                if not (stage / lib_name).is_file():
                    raise MlcBuildError(f"mlc_llm compile wrote no {lib_name}")
                libraries[target] = lib_name
        chat = _finish_chat_config(stage, source.folder, libraries)
        write_manifest(
            stage,
            name=name,
            tools=_tool_versions(install),
            source={"spec": source.spec, "kind": source.kind, "files_sha256": source.origin_files},
            patch=patch_status,
            options={
                "arch": opts.arch,
                "quantization": opts.quantization,
                "targets": list(libraries),
                "context_window_size": chat.get("context_window_size"),
                "prefill_chunk_size": chat.get("prefill_chunk_size"),
                "conv_template": conv_template,
                "keep_patch": opts.keep_patch,
            },
            libraries=libraries,
            param_names=_param_names(cache),
            extra={
                "backend": "mlc",
                "mlc_llm": {
                    "version": install.version,
                    "package_dir": str(install.package_dir),
                    "found_by": install.found_by,
                    # argv exactly as run; their -o paths are this staging folder, which was
                    # renamed to the artifact folder once everything succeeded.
                    "commands": commands,
                    "staging_dir": str(stage_dir),
                },
            },
        )
    return MlcBuildResult(out, name, seconds, [], commands, patch_status)
