"""The WebGPU compile target: a Relax executable linked into one ``.wasm`` with emscripten.

The device kernels become WGSL (with our accurate f32 math, see accurate_math.py), the host code
wasm32 objects; emscripten links those with TVM's web runtime bitcode (toolchain.py). The result
is loaded by ``@mlc-ai/web-runtime`` in the browser (web/src/engine.js).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from mlcpatch.build.webgpu.accurate_math import MATH_VERSION, register_accurate_math
from mlcpatch.build.webgpu.toolchain import Toolchain, ToolchainError, ensure_toolchain

WASM_HOST = {"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}
LIB_SUFFIX = "-webgpu.wasm"
# Bumped when the emitted .wasm changes for the same model and toolchain.
WEBGPU_VERSION = 2
# Seconds of every emcc link in this process, for the benchmark (the build reports totals).
LINK_SECONDS: list[float] = []

# TVM's own link flags for tvmjs (tvm.contrib.tvmjs.create_tvmjs_wasm). The initial memory
# only has to hold the runtime: weights live in GPU buffers and the heap grows on demand.
_LINK_FLAGS = (
    "-O3",
    "-std=c++17",
    "--no-entry",
    "-sWASM_BIGINT=1",
    "-sERROR_ON_UNDEFINED_SYMBOLS=0",
    "-sSTANDALONE_WASM=1",
    "-sALLOW_MEMORY_GROWTH=1",
    "-sTOTAL_MEMORY=160MB",
)


def make_target() -> Any:
    """The WebGPU target (wasm32 host); registers the math lowerings the kernels need."""
    from tvm.target import Target

    # The lowering is a process-wide registration that must precede any WebGPU compile; doing
    # it here puts it on the one path every WebGPU build takes.
    register_accurate_math()
    return Target({"kind": "webgpu"}, host=WASM_HOST)


def build_identity(toolchain: Toolchain | None = None) -> dict[str, Any]:
    """What, beyond the model and TVM, decides the bytes of a WebGPU build (for cache keys)."""
    toolchain = toolchain or ensure_toolchain()
    return {
        "webgpu": WEBGPU_VERSION,
        "math": MATH_VERSION,
        "toolchain": toolchain.identity,
    }


class EmccLinker:
    """``fcompile`` for ``export_library``: object files (not bitcode) + runtime -> .wasm.

    ``object_format = "o"`` makes TVM hand over wasm object files: its LLVM 22 bitcode is
    unreadable by Debian emscripten's LLVM 14, while object files link fine.
    """

    object_format = "o"

    def __init__(self, toolchain: Toolchain, flags: Sequence[str] = ()) -> None:
        self.toolchain = toolchain
        self.flags = list(flags)
        self.seconds = 0.0

    def __call__(
        self, output: str, objects: Sequence[str] | str, options: Sequence[str] | None = None
    ) -> None:
        objects = [objects] if isinstance(objects, str) else list(objects)
        cmd = [self.toolchain.emcc, *_LINK_FLAGS, *self.flags, "-o", output]
        cmd += [str(p) for p in self.toolchain.link_inputs] + objects + list(options or [])
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        self.seconds = time.perf_counter() - start
        LINK_SECONDS.append(self.seconds)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
            raise ToolchainError(
                f"emcc failed to link {os.path.basename(output)}; its last output is above it",
                detail=tail,
            )


def export_wasm(executable: Any, path: pathlib.Path) -> float:
    """Link ``executable`` (relax.build for make_target()) into ``path``; the link seconds."""
    linker = EmccLinker(ensure_toolchain())
    executable.export_library(str(path), fcompile=linker)
    return linker.seconds
