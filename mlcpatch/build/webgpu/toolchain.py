"""The WebGPU toolchain: emscripten + TVM's web runtime compiled to bitcode, built once per TVM.

A WebGPU build links the model's wasm32 objects with three bitcode files of TVM's web runtime
(``wasm_runtime.bc``, ``tvmjs_support.bc``, ``webgpu_runtime.bc``). The apache-tvm wheel ships
their sources but no build of them, and nine headers those sources include are missing from
it; ``toolchain_headers/`` holds our own versions. The bitcode is built into
``~/.cache/mlcpatch/tvm-web-<tvm version>/`` (``$MLCPATCH_TOOLCHAIN_DIR`` overrides the whole
path), about 2.5 minutes on 2 cores, and rebuilt only when TVM, emscripten or our headers
change. It lives apart from the build-step cache ($MLCPATCH_CACHE_DIR), which tests redirect
to a fresh folder: the toolchain is installed once, like a system package.

``python -m mlcpatch.build.webgpu.toolchain`` builds it (``--check`` only reports).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata

from mlcpatch.artifact import sha256_file
from mlcpatch.errors import USER_ERROR_EXIT, MlcpatchError, one_line

HEADERS_DIR = pathlib.Path(__file__).resolve().parent / "toolchain_headers"
RUNTIME_BITCODE = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
# Our parallel launcher (mlcpatch/build/wasm/threads.c), linked into every web library in
# place of the runtime's serial one. An object file, not bitcode: it is compiled with atomics,
# which link-time optimisation would spread to the whole runtime (making its thread-locals
# real TLS, which nothing initialises without emscripten's pthreads).
THREADS_SOURCE = pathlib.Path(__file__).resolve().parents[1] / "wasm" / "threads.c"
THREADS_OBJECT = "wasm_threads.o"
# The runtime's parallel entry points and workspace allocator, renamed so that threads.c can
# define the real ones (and call these).
_RENAMES = {
    "TVMBackendParallelLaunch": "mlcpatch_serial_parallel_launch",
    "TVMBackendParallelBarrier": "mlcpatch_serial_parallel_barrier",
    "TVMBackendAllocWorkspace": "mlcpatch_serial_alloc_workspace",
    "TVMBackendFreeWorkspace": "mlcpatch_serial_free_workspace",
}
STAMP = "toolchain.json"
INSTALL_HINT = "apt-get install -y --no-install-recommends emscripten"
# Bumped when the way the bitcode is compiled changes (flags, layout).
TOOLCHAIN_VERSION = 2
_CFLAGS = ("-O3", "-std=c++17", "-Wno-ignored-attributes")


class ToolchainError(MlcpatchError, RuntimeError):
    """The WebGPU toolchain is missing or broken; the message says what to install or run."""


@dataclasses.dataclass(frozen=True)
class Toolchain:
    emcc: str
    emcc_version: str
    folder: pathlib.Path  # holds the bitcode files and the stamp

    @property
    def bitcode(self) -> list[pathlib.Path]:
        return [self.folder / f"{name}.bc" for name in RUNTIME_BITCODE]

    @property
    def link_inputs(self) -> list[pathlib.Path]:
        """What every web library links besides its own objects: runtime bitcode + threads."""
        return [*self.bitcode, self.folder / THREADS_OBJECT]

    @property
    def identity(self) -> str:
        """Changes whenever a wasm linked with this toolchain could differ."""
        return json.loads((self.folder / STAMP).read_text())["key"]


def tvm_version() -> str:
    return metadata.version("apache-tvm")


def toolchain_dir() -> pathlib.Path:
    env = os.environ.get("MLCPATCH_TOOLCHAIN_DIR")
    if env:
        return pathlib.Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "mlcpatch" / f"tvm-web-{tvm_version()}"


def find_emcc() -> tuple[str, str]:
    """(path, first line of ``emcc --version``); ToolchainError if unusable."""
    emcc = os.environ.get("MLCPATCH_EMCC") or shutil.which("emcc")
    if emcc is None:
        raise ToolchainError(
            f"emcc (emscripten) not found: WebGPU builds need it. Install it with `{INSTALL_HINT}` "
            "(Debian/Ubuntu), then run `make toolchain` "
            "(or `python -m mlcpatch.build.webgpu.toolchain`)."
        )
    try:
        proc = subprocess.run([emcc, "--version"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(
            f"{emcc} does not run ({exc}); reinstall it: `{INSTALL_HINT}`"
        ) from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ToolchainError(
            f"`{emcc} --version` failed ({detail[0]}); reinstall: `{INSTALL_HINT}`"
        )
    return emcc, proc.stdout.strip().splitlines()[0]


def _tvm_packages() -> tuple[pathlib.Path, pathlib.Path]:
    import tvm
    import tvm_ffi

    return pathlib.Path(tvm.__file__).parent, pathlib.Path(tvm_ffi.__file__).parent


def _headers_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(HEADERS_DIR.rglob("*.h")):
        digest.update(path.relative_to(HEADERS_DIR).as_posix().encode() + b"\0")
        sha256_file(path, digest)
    digest.update(b"threads.c\0")
    sha256_file(THREADS_SOURCE, digest)
    return digest.hexdigest()


def _key(emcc_version: str) -> str:
    parts = {
        "toolchain": TOOLCHAIN_VERSION,
        "tvm": tvm_version(),
        "emcc": emcc_version,
        "headers": _headers_digest(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _source_tree(dest: pathlib.Path) -> None:
    """Lay out a TVM source tree (TVM_HOME) from the installed wheels plus our headers.

    Copies rather than symlinks: the sources include each other by relative paths, which a
    compiler resolves against the directory a file was found in.
    """
    tvm_dir, ffi_dir = _tvm_packages()
    for sub in ("src", "include", "web"):
        if not (tvm_dir / sub).is_dir():
            raise ToolchainError(f"{tvm_dir / sub} is missing: reinstall apache-tvm")
        shutil.copytree(tvm_dir / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"))
    ffi_dest = dest / "3rdparty" / "tvm-ffi"
    for sub in ("include", "src", "3rdparty"):
        shutil.copytree(ffi_dir / sub, ffi_dest / sub)
    shutil.copytree(HEADERS_DIR, dest, dirs_exist_ok=True)


def _include_flags(root: pathlib.Path) -> list[str]:
    dirs = (
        root,
        root / "include",
        root / "3rdparty" / "tvm-ffi" / "include",
        root / "3rdparty" / "tvm-ffi" / "3rdparty" / "dlpack" / "include",
        root / "3rdparty" / "compiler-rt",
    )
    return [f"-I{d}" for d in dirs]


def _run_emcc(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        raise ToolchainError(
            f"compiling {what} failed; emcc's last output is above it", detail=tail
        )


def _compile_bitcode(emcc: str, root: pathlib.Path, name: str, out: pathlib.Path) -> None:
    cmd = [emcc, *_include_flags(root), *_CFLAGS, "-emit-llvm", "-c"]
    if name == "wasm_runtime":
        cmd += [f"-D{old}={new}" for old, new in _RENAMES.items()]
    cmd += ["-o", str(out), str(root / "web" / "emcc" / f"{name}.cc")]
    _run_emcc(cmd, f"TVM's web runtime ({name}.cc)")


def _compile_threads(emcc: str, out: pathlib.Path) -> None:
    cmd = [emcc, "-O3", "-std=c11", "-matomics", "-mbulk-memory", "-c"]
    _run_emcc([*cmd, "-o", str(out), str(THREADS_SOURCE)], "the wasm thread pool (threads.c)")


def build_toolchain(log: Callable[[str], None] = print) -> Toolchain:
    """Build the runtime bitcode into ``toolchain_dir()`` (replacing what is there)."""
    emcc, version = find_emcc()
    folder = toolchain_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{folder.name}-", dir=folder.parent) as tmp:
        work = pathlib.Path(tmp)
        root, out = work / "tvm", work / "out"
        out.mkdir()
        _source_tree(root)
        log(f"building TVM {tvm_version()}'s web runtime with {version} (about 3 minutes)")
        # The three files are independent; wasm_runtime takes most of the time.
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            jobs = [
                pool.submit(_compile_bitcode, emcc, root, name, out / f"{name}.bc")
                for name in RUNTIME_BITCODE
            ]
            jobs.append(pool.submit(_compile_threads, emcc, out / THREADS_OBJECT))
            for job in jobs:
                job.result()
        stamp = {"key": _key(version), "tvm": tvm_version(), "emcc": version}
        (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(out, folder)
    log(f"toolchain ready: {folder}")
    return Toolchain(emcc, version, folder)


def find_toolchain() -> Toolchain:
    """The built toolchain; ToolchainError naming the command to run when it is not."""
    emcc, version = find_emcc()
    folder = toolchain_dir()
    missing = [p.name for p in Toolchain(emcc, version, folder).link_inputs if not p.is_file()]
    if missing or not (folder / STAMP).is_file():
        raise ToolchainError(
            f"TVM's web runtime is not built in {folder}: run `make toolchain` "
            "(or `python -m mlcpatch.build.webgpu.toolchain`)"
        )
    toolchain = Toolchain(emcc, version, folder)
    if toolchain.identity != _key(version):
        raise ToolchainError(
            f"{folder} was built for another TVM, emscripten or header set: rebuild it with "
            "`make toolchain` (or `python -m mlcpatch.build.webgpu.toolchain`)"
        )
    return toolchain


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialise builds of one toolchain folder: parallel `mlcpatch build`s may all want it."""
    folder = toolchain_dir()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_toolchain(log: Callable[[str], None] = print) -> Toolchain:
    """The toolchain, building it first when it is missing or stale."""
    try:
        return find_toolchain()
    except ToolchainError:
        find_emcc()  # a missing emcc is reported as such, not as a failed build
    with _build_lock():
        try:  # another process may have built it while we waited
            return find_toolchain()
        except ToolchainError:
            return build_toolchain(log)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlcpatch.build.webgpu.toolchain",
        description="Build (once) the emscripten toolchain and TVM web runtime for WebGPU builds.",
    )
    parser.add_argument("--check", action="store_true", help="only report; build nothing")
    parser.add_argument("--rebuild", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    try:
        if args.check:
            toolchain = find_toolchain()
            print(f"ok: {toolchain.emcc_version}; runtime bitcode in {toolchain.folder}")
        elif args.rebuild:
            with _build_lock():
                build_toolchain()
        else:
            toolchain = ensure_toolchain()
            print(f"ok: {toolchain.emcc_version}; runtime bitcode in {toolchain.folder}")
    except ToolchainError as exc:
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        print(f"Error: {one_line(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
