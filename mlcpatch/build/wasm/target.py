"""The wasm CPU compile target: every kernel on the CPU, as wasm32 code with 128-bit SIMD.

The library is linked like the WebGPU one (object files + TVM's web runtime bitcode, with
emscripten: see ``mlcpatch.build.webgpu.target.EmccLinker``) and loaded by the same
``@mlc-ai/web-runtime``, on ``tvm.cpu()``: weights live in the wasm heap, no GPU is involved.
It is what the browser engine falls back to without WebGPU (web/src/engine.js).

Threads: the library imports its memory, declared shared, so that a cross-origin isolated page
can run TVM's parallel loops on Web Workers that instantiate the same library on that memory
(our launcher, threads.c; the page side is web/src/wasm_threads.js). Elsewhere the engine
clears the shared flag before compiling it and every parallel loop runs on its one thread.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from mlcpatch.build.webgpu.target import WASM_HOST, EmccLinker
from mlcpatch.build.webgpu.toolchain import ensure_toolchain

LIB_SUFFIX = "-cpu.wasm"
# Bumped when the emitted .wasm changes for the same model and toolchain.
WASM_VERSION = 2
# A shared memory must declare its maximum: 2 GiB, emscripten's default for a growable heap.
# The runtime bitcode is compiled without atomics (its thread-locals stay plain globals, which
# only the engine's thread uses), so the linker's check that every object allows shared memory
# is switched off; threads.c is what makes sharing safe.
THREAD_LINK_FLAGS = (
    "-Wl,--shared-memory",
    "-Wl,--import-memory",
    "-Wl,--no-check-features",
    "-sMAXIMUM_MEMORY=2GB",
)


def make_target() -> Any:
    """wasm32 with SIMD128 (every browser with WebAssembly SIMD: Chrome 91, Firefox 89,
    Safari 16.4) and the llvm target's reassociation, so reductions vectorise the same way."""
    from tvm.target import Target

    return Target({**WASM_HOST, "mattr": ["+simd128"], "fast-math-reassoc": True})


def export_wasm(executable: Any, path: pathlib.Path) -> float:
    """Link ``executable`` (relax.build for make_target()) into ``path``; the link seconds."""
    linker = EmccLinker(ensure_toolchain(), THREAD_LINK_FLAGS)
    executable.export_library(str(path), fcompile=linker)
    export_imported_memory(path)
    return linker.seconds


def _leb(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned LEB128 at ``pos``: (value, position after it)."""
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_EXPORT_SECTION = 7
_MEMORY_KIND = 2


def export_imported_memory(path: pathlib.Path, name: str = "memory") -> None:
    """Add an export of memory 0 to the .wasm at ``path`` (rewritten through a temp file).

    The library imports its memory (to share it with workers), and this wasm-ld has no
    --export-memory; tvmjs's WASI layer finds the heap as ``exports.memory``.
    """
    data = path.read_bytes()
    if data[:4] != b"\0asm":
        raise ValueError(f"{path} is not a WebAssembly module")
    pos = 8
    while pos < len(data):
        start = pos
        section, pos = data[pos], pos + 1
        size, body = _leb(data, pos)
        if section == _EXPORT_SECTION:
            count, entries = _leb(data, body)
            payload = _uleb(count + 1) + data[entries : body + size]
            payload += _uleb(len(name)) + name.encode() + bytes([_MEMORY_KIND, 0])
            new = data[:start] + bytes([_EXPORT_SECTION]) + _uleb(len(payload)) + payload
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(new + data[body + size :])
            os.replace(tmp, path)
            return
        pos = body + size
    raise ValueError(f"{path} has no export section")
