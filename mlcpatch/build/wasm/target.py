"""The wasm CPU compile target: every kernel on the CPU, as wasm32 code with 128-bit SIMD.

The library is linked like the WebGPU one (object files + TVM's web runtime bitcode, with
emscripten: see ``mlcpatch.build.webgpu.target.EmccLinker``) and loaded by the same
``@mlc-ai/web-runtime``, on ``tvm.cpu()``: weights live in the wasm heap, no GPU is involved.
It is what the browser engine falls back to without WebGPU (web/src/engine.js).

Single-threaded: TVM's parallel loops run serially in this runtime build (a threaded one
would need a pthreads build of the web runtime and a cross-origin isolated page).
"""

from __future__ import annotations

import pathlib
from typing import Any

from mlcpatch.build.webgpu.target import WASM_HOST, EmccLinker
from mlcpatch.build.webgpu.toolchain import ensure_toolchain

LIB_SUFFIX = "-cpu.wasm"
# Bumped when the emitted .wasm changes for the same model and toolchain.
WASM_VERSION = 1


def make_target() -> Any:
    """wasm32 with SIMD128 (every browser with WebAssembly SIMD: Chrome 91, Firefox 89,
    Safari 16.4) and the llvm target's reassociation, so reductions vectorise the same way."""
    from tvm.target import Target

    return Target({**WASM_HOST, "mattr": ["+simd128"], "fast-math-reassoc": True})


def export_wasm(executable: Any, path: pathlib.Path) -> float:
    """Link ``executable`` (relax.build for make_target()) into ``path``; the link seconds."""
    linker = EmccLinker(ensure_toolchain())
    executable.export_library(str(path), fcompile=linker)
    return linker.seconds
