"""Which CPU a CPU (llvm) library is compiled for, and whether this machine can run it.

A library compiled for a CPU (LLVM ``-mcpu``) may use every instruction LLVM credits that CPU
with; run on a CPU without one of them it dies of SIGILL, with no Python error. So builds
record the CPU (manifest ``options.cpu``), ``native`` picks one this machine fully has, and the
runtime checks before loading (``check_library_cpu``).

Only the vector and bit-manipulation extensions are compared: those are what compiled kernels
use, and they are what virtual machines hide (a VM may report a Zen 3 model yet mask AVX2).
This machine's extensions come from ``/proc/cpuinfo`` on Linux; elsewhere from LLVM's model of
the CPU it detects (which cannot see masking, so the check is then a weaker one).
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

# LLVM feature name -> /proc/cpuinfo flag (x86). Features outside this table are not compared.
X86_FLAGS = {
    "sse3": "pni",
    "ssse3": "ssse3",
    "sse4a": "sse4a",
    "sse4.1": "sse4_1",
    "sse4.2": "sse4_2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "bmi": "bmi1",
    "bmi2": "bmi2",
    "avxvnni": "avx_vnni",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512cd": "avx512cd",
    "avx512dq": "avx512dq",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "avx512vbmi": "avx512vbmi",
}
# Generic x86-64 levels, best first: what ``native`` falls back to when this machine lacks
# something its own CPU model has (a VM's masking).
X86_LEVELS = ("x86-64-v4", "x86-64-v3", "x86-64-v2")
PORTABLE = "portable"


def cpu_features(cpu: str) -> frozenset[str]:
    """The features LLVM gives the CPU named ``cpu`` (an LLVM CPU name)."""
    from tvm.target import Target
    from tvm.target.codegen import llvm_get_cpu_features

    return frozenset(str(f) for f in llvm_get_cpu_features(Target({"kind": "llvm", "mcpu": cpu})))


def parse_cpuinfo_flags(text: str) -> frozenset[str] | None:
    """The ``flags`` of the first processor in a /proc/cpuinfo text (None: no such line)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


@functools.cache
def host_flags() -> frozenset[str] | None:
    """This machine's /proc/cpuinfo flags (x86 Linux), None where there are none to read."""
    try:
        return parse_cpuinfo_flags(pathlib.Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def missing_features(required: frozenset[str], flags: frozenset[str]) -> list[str]:
    """The features of ``required`` (LLVM names) that a CPU with cpuinfo ``flags`` lacks."""
    return sorted(f for f in required if f in X86_FLAGS and X86_FLAGS[f] not in flags)


def host_cpu() -> str:
    """LLVM's name for this machine's CPU model."""
    from tvm.target.codegen import llvm_get_system_cpu

    return str(llvm_get_system_cpu())


def native_cpu(flags: frozenset[str] | None = None, model: str | None = None) -> str:
    """The best CPU name to compile for on this machine: its own model when it has every
    feature LLVM credits that model with, else the best generic x86-64 level it has, else
    ``portable`` (the architecture's baseline). ``flags`` / ``model`` default to this machine's.
    """
    flags = host_flags() if flags is None else flags
    model = host_cpu() if model is None else model
    if flags is None or not missing_features(cpu_features(model), flags):
        return model
    for level in X86_LEVELS:
        if not missing_features(cpu_features(level), flags):
            return level
    return PORTABLE


def library_cpu_problem(cpu: str | None, flags: frozenset[str] | None = None) -> str | None:
    """Why a library compiled for ``cpu`` cannot run here (None: it can, or cannot be told)."""
    if cpu is None or cpu == PORTABLE:
        return None
    if flags is None:
        flags = host_flags()
    if flags is not None:
        missing = missing_features(cpu_features(cpu), flags)
    else:  # no cpuinfo: compare with LLVM's model of this machine's CPU
        missing = sorted(cpu_features(cpu) & set(X86_FLAGS) - cpu_features(host_cpu()))
    if not missing:
        return None
    return (
        f"its CPU library was compiled for {cpu!r}, whose instructions {', '.join(missing)} "
        "this CPU lacks (it would crash); rebuild it here (mlcpatch build ... --overwrite), "
        "or with --cpu portable for a library any CPU runs"
    )


def check_library_cpu(folder: Any, cpu: str | None) -> None:
    """Raise ArtifactError when the library of ``folder`` was compiled for a CPU this is not."""
    from mlcpatch.artifact import ArtifactError

    problem = library_cpu_problem(cpu)
    if problem is not None:
        raise ArtifactError(f"{folder}: {problem}")
