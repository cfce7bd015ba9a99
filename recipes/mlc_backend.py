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

Finding MLC-LLM, without importing it (importing loads its native library):

* the command is the ``mlc_llm`` executable on PATH, the way MLC-LLM's documentation runs it;
  when there is none but this interpreter can find the ``mlc_llm`` package, it is
  ``python -m mlc_llm`` with this interpreter;
* the package patched is the one that command runs: ``$MLCPATCH_MLC_LLM`` when set (as for
  ``mlcpatch patch``), else the one the executable's own Python finds (read from its ``#!`` line
  and asked with ``importlib.util.find_spec``, which does not import), else the one this
  interpreter finds.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlcpatch
import mlcpatch.patcher as patcher
from mlcpatch.patcher import PatchError, patch_file, revert_file
from mlcpatch.patcher.files import BACKUP_SUFFIX
from mlcpatch.patcher.resolve import (
    MLC_ENV,
    ArchFile,
    mlc_archs,
    mlc_override_dir,
    mlc_package_here,
)
from mlcpatch.recipes.artifact import (
    CHAT_CONFIG,
    TOKENIZER_FILES,
    OutputExistsError,
    staging_dir,
    write_manifest,
)
from mlcpatch.recipes.source import resolve_source
from mlcpatch.recipes.targets import parse_targets

INSTALL_URL = "https://llm.mlc.ai/docs/install/mlc_llm"
EMCC_URL = "https://llm.mlc.ai/docs/install/emcc.html"
OLDEST_VERSION = (0, 17)  # the oldest MLC-LLM whose CLI this was written against
HIDDEN_FUNCTIONS = ("get_last_hidden", "decode_last_hidden")
TENSOR_CACHE = "tensor-cache.json"
OLD_TENSOR_CACHE = "ndarray-cache.json"  # MLC-LLM <= 0.19
WASM_RUNTIME_BC = Path("web", "dist", "wasm", "mlc_wasm_runtime.bc")
TAIL_BYTES = 16384  # how much of a step's output is kept for its error message
TAIL_LINES = 3


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


class MlcBuildError(RuntimeError):
    """A build with MLC-LLM that cannot proceed; the message is one line for the user."""


class MlcNotFoundError(MlcBuildError):
    pass


class MlcStepError(MlcBuildError):
    """An `mlc_llm` command failed; the message names it and ends with its last output."""


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


@dataclasses.dataclass(frozen=True)
class MlcInstall:
    command: tuple[str, ...]  # ("/venv/bin/mlc_llm",) or (python, "-m", "mlc_llm")
    package_dir: Path  # the mlc_llm package folder (holds model/model.py)
    version: str
    found_by: str  # how the package was found, for messages and the manifest
    tvm_version: str | None = None  # MLC's own TVM (mlc-ai wheels), when its dist is found


# --- finding MLC-LLM ----------------------------------------------------------------------------


def not_installed_message(detail: str = "") -> str:
    why = f" ({detail})" if detail else ""
    return (
        f"MLC-LLM is not installed{why}: no `mlc_llm` command on PATH and no mlc_llm package "
        f"for {sys.executable}; use the built-in compiler (--backend builtin), or install "
        f"MLC-LLM: pip install --pre -f https://mlc.ai/wheels mlc-llm-nightly-cpu "
        f"mlc-ai-nightly-cpu (see {INSTALL_URL})"
    )


_FIND_SPEC = (
    "import importlib.util as u\n"
    "s = u.find_spec('mlc_llm')\n"
    "print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')\n"
)
_PIP_SH_EXEC = re.compile(r"""^'''exec' (?:"([^"]+)"|(\S+))""")


def script_interpreter(script: Path) -> str | None:
    """The Python a console script runs with, from its ``#!`` line; None if it is not one."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(2048).decode("utf-8", errors="replace")
    except OSError:
        return None
    if not head.startswith("#!"):
        return None
    lines = head.splitlines()
    words = shlex.split(lines[0][2:].strip()) if lines[0][2:].strip() else []
    if words and Path(words[0]).name in ("sh", "bash") and len(lines) > 1:
        # pip's form for long interpreter paths: #!/bin/sh + '''exec' "/path/python" "$0" "$@"
        match = _PIP_SH_EXEC.match(lines[1])
        words = [match.group(1) or match.group(2)] if match else []
    elif words and Path(words[0]).name == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        found = shutil.which(rest[0]) if rest else None
        words = [found] if found else []
    if not words or not Path(words[0]).name.startswith(("python", "pypy")):
        return None
    return words[0]


def _package_seen_by(python: str) -> Path | None:
    """Where ``python`` would import mlc_llm from, asked without importing it."""
    try:
        done = subprocess.run(
            [python, "-c", _FIND_SPEC], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError):
        return None
    location = done.stdout.strip()
    return Path(location) if done.returncode == 0 and location else None


def _dist_versions(package_dir: Path) -> tuple[str | None, str | None]:
    """(mlc-llm version, mlc-ai version) from the dist-info folders beside the package."""
    mlc_llm = mlc_ai = None
    try:
        dists = list(importlib.metadata.distributions(path=[str(package_dir.parent)]))
    except OSError:
        dists = []
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("mlc-llm") and mlc_llm is None:
            mlc_llm = dist.version
        elif name.startswith("mlc-ai") and mlc_ai is None:
            mlc_ai = dist.version
    return mlc_llm, mlc_ai


def mlc_version(package_dir: Path) -> tuple[str, str | None]:
    """MLC-LLM's version (and its TVM's), read from metadata files, never by importing."""
    version, tvm = _dist_versions(package_dir)
    if version is not None:
        return version, tvm
    libinfo = package_dir / "libinfo.py"
    if libinfo.is_file():
        match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", libinfo.read_text("utf-8"))
        if match:
            return f"{match.group(1)} (source tree)", tvm
    return "unknown", tvm


def find_mlc_llm() -> MlcInstall:
    """The command that runs MLC-LLM and the package it runs; MlcNotFoundError if none."""
    exe = shutil.which("mlc_llm")
    override = mlc_override_dir()
    if exe is not None:
        command: tuple[str, ...] = (exe,)
        python = script_interpreter(Path(exe))
        if override is not None:
            package, found_by = override, f"${MLC_ENV}"
        else:
            package = _package_seen_by(python) if python else None
            found_by = f"the Python of {exe} ({python})"
            if package is None:
                package, found_by = mlc_package_here(), f"this Python ({sys.executable})"
        if package is None:
            raise MlcNotFoundError(
                f"found the mlc_llm command ({exe}) but not the mlc_llm package it runs; set "
                f"{MLC_ENV} to the folder holding that package, or use --backend builtin"
            )
    else:
        here = mlc_package_here()
        if here is None:
            raise MlcNotFoundError(not_installed_message())
        command = (sys.executable, "-m", "mlc_llm")
        package, found_by = (
            (override, f"${MLC_ENV}") if override else (here, f"this Python ({sys.executable})")
        )
    if not (package / "model").is_dir():
        raise MlcNotFoundError(
            f"{package} does not look like the mlc_llm package (no model/ folder; found via "
            f"{found_by}); set {MLC_ENV} to the right folder, or use --backend builtin"
        )
    version, tvm = mlc_version(package)
    return MlcInstall(command, package, version, found_by, tvm)


# --- patching MLC-LLM's model file around the build ---------------------------------------------


def _backups(path: Path) -> set[Path]:
    return set(path.parent.glob(path.name + BACKUP_SUFFIX + "*"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextmanager
def patched_model(
    found: ArchFile, keep: bool, log: Callable[[str], None]
) -> Iterator[dict[str, Any]]:
    """Patch ``found`` in place for the block, then revert it byte for byte (also when the block
    raises) unless ``keep``. A file that was already patched is left exactly as found.

    Yields the patch status; its ``after_build`` entry is filled in when the block ends.
    """
    path = found.path
    try:
        original = path.read_bytes()
        backups_before = _backups(path)
        result = patch_file(path, class_name=found.class_name)
        before = result.before if result.changed else revert_file(path, dry_run=True).after
    except PatchError as exc:
        raise MlcBuildError(f"cannot patch MLC-LLM's {found.arch} model: {exc}") from exc
    except OSError as exc:
        raise MlcBuildError(f"cannot patch {path}: {exc.strerror or exc}") from exc
    pristine = before.encode("utf-8")
    ours = result.changed
    status: dict[str, Any] = {
        "patched": True,
        "patcher_version": getattr(patcher, "__version__", mlcpatch.__version__),
        "changed": ours,
        "was_patched_before": not ours,
        "class": result.class_name or found.class_name,
        "functions_added": [
            f for f in HIDDEN_FUNCTIONS if f"def {f}(" not in pristine.decode("utf-8")
        ],
        "model_file": str(path),
        "origin": "mlc-llm",
        "pristine_sha256": _sha256(pristine),
        "patched_sha256": _sha256(result.after.encode("utf-8")),
        "after_build": "",
    }
    log(
        f"patched {path} ({status['class']}, {result.mode})"
        if ours
        else f"{path} was already patched; leaving it as it is"
    )
    revert = ours and not keep

    def undo() -> None:
        revert_file(path)
        if path.read_bytes() != original:
            raise PatchError(f"{path}: reverting did not restore the original bytes")
        for leftover in _backups(path) - backups_before:
            leftover.unlink()
        log(f"reverted {path}")

    try:
        yield status
    except BaseException as exc:
        if revert:
            try:
                undo()
            except (PatchError, OSError) as undo_exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise MlcBuildError(
                    f"{first}; and reverting the patch of {path} failed too ({undo_exc}); "
                    f"undo it with: mlcpatch patch {path} --revert --force"
                ) from exc
        raise
    if revert:
        try:
            undo()
        except (PatchError, OSError) as exc:
            raise MlcBuildError(
                f"the build finished but reverting the patch of {path} failed ({exc}); undo it "
                f"with: mlcpatch patch {path} --revert --force"
            ) from exc
        status["after_build"] = "reverted"
    elif ours:
        status["after_build"] = "kept"
        log(f"kept the patch in {path} (--keep-patch); undo: mlcpatch patch {path} --revert")
    else:
        status["after_build"] = "left as found (patched before the build)"


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so a terminated build still runs its cleanup
    (kills the running mlc_llm, reverts the patch, removes the staging folder)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- running mlc_llm ------------------------------------------------------------------------------


def _tail(data: bytes) -> str:
    """The last lines of a step's output; after a Python (or TVM) traceback, the error itself:
    the lines from the first unindented one after the last "Traceback" line."""
    text = data.decode("utf-8", errors="replace")
    raw = [line.rstrip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    marks = [i for i, line in enumerate(raw) if "Traceback (most recent call last)" in line]
    if marks:
        after = raw[marks[-1] + 1 :]
        start = next((i for i, line in enumerate(after) if not line[:1].isspace()), None)
        if start is not None:
            raw = after[start:]
    lines = [line.strip() for line in raw]
    tail = " | ".join(lines[-TAIL_LINES:] if not marks else lines[:TAIL_LINES]) or "no output"
    return tail if len(tail) <= 600 else "..." + tail[-597:]


def run_step(argv: list[str], *, echo: bool) -> None:
    """Run one mlc_llm command, streaming its output to stderr as it comes (progress bars too);
    on failure raise MlcStepError naming the command and quoting its last lines."""
    name = " ".join(argv[:2]) if argv[1:2] == ["-m"] else Path(argv[0]).name
    step = next((a for a in argv[1:] if a in ("convert_weight", "gen_config", "compile")), "")
    label = f"mlc_llm {step}".strip()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0
        )
    except OSError as exc:
        raise MlcStepError(f"{label}: cannot run {name}: {exc.strerror or exc}") from exc
    assert proc.stdout is not None
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = bytearray()
    try:
        while chunk := proc.stdout.read(65536):
            tail += chunk
            del tail[:-TAIL_BYTES]
            if echo:
                sys.stderr.write(decoder.decode(chunk))
                sys.stderr.flush()
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
    if code != 0:
        raise MlcStepError(
            f"{label} failed (exit code {code}): {shlex.join(argv)}; last output: {_tail(tail)}"
        )


# --- the build ------------------------------------------------------------------------------------


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
            {
                "name": name,
                "created_unix": int(time.time()),
                "backend": "mlc",
                "tools": _tool_versions(install),
                "mlc_llm": {
                    "version": install.version,
                    "package_dir": str(install.package_dir),
                    "found_by": install.found_by,
                    # argv exactly as run; their -o paths are this staging folder, which was
                    # renamed to the artifact folder once everything succeeded.
                    "commands": commands,
                    "staging_dir": str(stage_dir),
                },
                "source": {
                    "spec": source.spec,
                    "kind": source.kind,
                    "files_sha256": source.origin_files,
                },
                "patch": patch_status,
                "options": {
                    "arch": opts.arch,
                    "quantization": opts.quantization,
                    "targets": list(libraries),
                    "context_window_size": chat.get("context_window_size"),
                    "prefill_chunk_size": chat.get("prefill_chunk_size"),
                    "conv_template": conv_template,
                    "keep_patch": opts.keep_patch,
                },
                "libraries": libraries,
                "param_names": _param_names(cache),
            },
        )
    return MlcBuildResult(out, name, seconds, [], commands, patch_status)
