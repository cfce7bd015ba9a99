"""Compile targets: one table entry per kind of library the build can produce.

``llvm`` (a native CPU shared library, for the Python runtime), ``webgpu`` (WGSL kernels with a
wasm32 host, linked with emscripten) and ``wasm`` (every kernel on the CPU as wasm32 SIMD code,
the browser's fallback without WebGPU). The rest of the build iterates over this table.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable
from typing import Any

from mlcpatch.build.errors import BuildOptionError
from mlcpatch.build.wasm import target as _wasm
from mlcpatch.build.webgpu import target as _webgpu


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    name: str
    lib_suffix: str  # the library is written as <artifact name><lib_suffix>
    make_target: Callable[[], Any]  # -> tvm.target.Target (built lazily: tvm imports are slow)
    export: Callable[[Any, pathlib.Path], None]  # (relax executable, output path)
    # IRModule -> IRModule, run before relax.build (target-specific Relax rewrites).
    prepare: Callable[[Any], Any] = lambda mod: mod
    # What, beyond the model and TVM, decides the library's bytes (toolchain, link flags): part
    # of the compile step's cache key. None for a plain llvm build.
    identity: Callable[[], dict[str, Any] | None] = lambda: None


DEFAULT_CPU = "native"  # --cpu when none is given


def _llvm_target(cpu: str | None = None) -> Any:
    from tvm.target import Target

    # TVM 0.27 dropped target strings: the dict form is the only one accepted.
    # Reassociation lets LLVM vectorise the dot-product reductions of the matmul kernels
    # (measured 5x on SmolLM2 prefill); results move by float rounding only (~1e-6).
    # Without -mcpu (--cpu portable) the library runs on any CPU of the host's architecture
    # (on x86-64: SSE2 only, no AVX2/FMA).
    options: dict[str, Any] = {"kind": "llvm", "fast-math-reassoc": True}
    if cpu is not None:
        options["mcpu"] = cpu
    return Target(options)


def resolve_cpu(name: str) -> str | None:
    """The LLVM CPU name for ``--cpu`` (None: portable). ``native`` is the best this machine
    fully has (mlcpatch/cpu_features.py: a VM may hide some of its CPU model's instructions)."""
    from tvm.target import Target
    from tvm.target.codegen import llvm_get_cpu_archlist

    from mlcpatch.cpu_features import PORTABLE, native_cpu

    cpu = native_cpu() if name == "native" else name
    if cpu == PORTABLE:
        return None
    known = list(llvm_get_cpu_archlist(Target({"kind": "llvm"})))
    if cpu not in known:
        hint = ", ".join(c for c in ("x86-64-v2", "x86-64-v3", "x86-64-v4") if c in known)
        raise BuildOptionError(
            f"unknown CPU {cpu!r} for the llvm target (LLVM knows {len(known)} names"
            + (f", e.g. {hint}" if hint else "")
            + "; or 'native', or 'portable')"
        )
    return cpu


def _cpu_prepare(mod: Any) -> Any:
    """Relax rewrites and kernel schedules for targets whose kernels run on a CPU (native or
    wasm32; run inside ``with target``)."""
    import tvm
    from tvm import relax

    from mlcpatch.build.cpu_schedule import schedule_cpu_kernels

    # nn.Linear exports permute_dims(W) + matmul; unfused, the VM transposes every weight on
    # every call and the matmul walks W with a stride (measured 20x slower on SmolLM2). Fused,
    # the kernel reads W[n, k] row by row.
    mod = relax.transform.FuseTransposeMatmul()(mod)
    # Legalize here (relax.build's default pipeline starts with these same passes, and they do
    # nothing the second time), so that the matmul kernels exist as TIR to be scheduled:
    # parallel and vectorized, 4-bit weights dequantized in registers (cpu_schedule.py).
    legalize = tvm.transform.Sequential(
        [
            relax.backend.DispatchSampling(),
            relax.backend.DispatchSortScan(),
            relax.transform.LegalizeOps(),
        ]
    )
    return schedule_cpu_kernels(legalize(mod))


def _export_shared_library(executable: Any, path: pathlib.Path) -> None:
    executable.export_library(str(path))


def _wasm_identity() -> dict[str, Any]:
    return {"wasm": _wasm.WASM_VERSION, **_webgpu.build_identity()}


TARGETS: dict[str, TargetSpec] = {
    "llvm": TargetSpec("llvm", "-cpu.so", _llvm_target, _export_shared_library, _cpu_prepare),
    "webgpu": TargetSpec(
        "webgpu",
        _webgpu.LIB_SUFFIX,
        _webgpu.make_target,
        _webgpu.export_wasm,
        identity=_webgpu.build_identity,
    ),
    "wasm": TargetSpec(
        "wasm",
        _wasm.LIB_SUFFIX,
        _wasm.make_target,
        _wasm.export_wasm,
        _cpu_prepare,
        identity=_wasm_identity,
    ),
}

PLANNED_TARGETS: tuple[str, ...] = ()


def parse_targets(text: str, cpu: str | None = None) -> list[TargetSpec]:
    """``"llvm,webgpu"`` -> table entries, in order, without duplicates.

    ``cpu`` (an LLVM CPU name, ``native`` or ``portable``) decides the instructions the llvm
    library may use (``-mcpu``). None is the default, ``native``: the fastest kernels, for
    this machine's CPU only (the runtime refuses a library whose instructions its CPU lacks).
    """
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise BuildOptionError("no compile target given")
    specs: list[TargetSpec] = []
    for name in names:
        if name in PLANNED_TARGETS:
            raise BuildOptionError(f"target {name!r} is not supported by the build yet (use llvm)")
        if name not in TARGETS:
            raise BuildOptionError(f"unknown target {name!r} (supported: {', '.join(TARGETS)})")
        if TARGETS[name] not in specs:
            specs.append(TARGETS[name])
    if TARGETS["llvm"] not in specs:
        if cpu is not None:
            raise BuildOptionError(
                "--cpu applies to the llvm target, which this build does not make"
            )
        return specs
    mcpu = resolve_cpu(cpu or DEFAULT_CPU)
    if mcpu is None:
        return specs
    llvm = dataclasses.replace(TARGETS["llvm"], make_target=functools.partial(_llvm_target, mcpu))
    return [llvm if spec.name == "llvm" else spec for spec in specs]
