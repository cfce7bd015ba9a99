"""Which CPU the llvm library is compiled for (mlcpatch/cpu_features.py): ``native`` picks what
this machine really has, and the runtime refuses a library whose instructions it lacks (a
SIGILL would kill the process with no Python error).

CPU models and their features are LLVM's own (no table of ours decides them); the cpuinfo
texts below are written here.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest

from mlcpatch import cpu_features
from mlcpatch.artifact import ArtifactError

pytest.importorskip("tvm")

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx f16c
bogomips\t: 4000.00

processor\t: 1
flags\t\t: fpu sse sse2
"""
# A Zen 3 machine as a VM may show it: every flag but AVX2, FMA and BMI2.
ZEN3_VM = frozenset("sse sse2 pni ssse3 sse4_1 sse4_2 avx f16c bmi1 popcnt".split())
BARE = frozenset({"sse", "sse2"})


def test_cpuinfo_flags_of_the_first_processor() -> None:
    flags = cpu_features.parse_cpuinfo_flags(CPUINFO)
    assert flags == frozenset("fpu sse sse2 pni ssse3 sse4_1 sse4_2 avx f16c".split())
    assert cpu_features.parse_cpuinfo_flags("processor : 0\nFeatures : neon\n") is None


def test_missing_features_use_cpuinfo_names() -> None:
    required = frozenset({"sse4.1", "avx2", "fma", "64bit", "avx512vnni"})
    have = frozenset({"sse4_1", "avx2"})
    # 64bit is not a vector extension: not compared.
    assert cpu_features.missing_features(required, have) == ["avx512vnni", "fma"]


def test_native_takes_the_model_when_nothing_is_hidden() -> None:
    every = frozenset(cpu_features.X86_FLAGS.values())
    assert cpu_features.native_cpu(flags=every, model="znver3") == "znver3"


def test_native_falls_back_to_a_level_the_machine_has() -> None:
    # znver3 implies AVX2/FMA, which this "VM" hides: x86-64-v3 needs them too, v2 does not.
    assert cpu_features.missing_features(cpu_features.cpu_features("znver3"), ZEN3_VM)
    assert cpu_features.native_cpu(flags=ZEN3_VM, model="znver3") == "x86-64-v2"
    assert cpu_features.native_cpu(flags=BARE, model="znver3") == "portable"


def test_library_problem_names_the_missing_instructions() -> None:
    problem = cpu_features.library_cpu_problem("x86-64-v3", flags=ZEN3_VM)
    assert problem is not None
    assert "'x86-64-v3'" in problem and "avx2" in problem and "fma" in problem
    assert "--cpu portable" in problem
    assert cpu_features.library_cpu_problem("x86-64-v2", flags=ZEN3_VM) is None
    assert cpu_features.library_cpu_problem(None, flags=BARE) is None
    assert cpu_features.library_cpu_problem("portable", flags=BARE) is None


def _a_cpu_this_machine_lacks() -> str:
    # AVX-512 FP16 (no AMD CPU has it yet) or SSE4a (no Intel CPU has it): one of them is missing.
    for name in ("sapphirerapids", "znver1", "x86-64-v4"):
        if cpu_features.library_cpu_problem(name) is not None:
            return name
    raise AssertionError("this machine has every CPU the test knows; add a newer one")


@pytest.mark.heavy
def test_runtime_refuses_a_library_for_another_cpu(
    built: Callable[..., pathlib.Path],
    tiny_hf: Callable[[str], pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.runtime import Runtime

    # The default build is for this machine, and says so.
    default = built("qwen2-untied")
    manifest = json.loads((default / "manifest.json").read_text())
    native = cpu_features.native_cpu()
    assert manifest["options"]["cpu"] == (None if native == "portable" else native)
    Runtime(default)

    other = _a_cpu_this_machine_lacks()
    out = tmp_path / "other-cpu"
    build(
        BuildOptions(
            "qwen2", str(tiny_hf("qwen2-untied")), "q0f32", cpu=other, out=out, progress=False
        )
    )
    assert json.loads((out / "manifest.json").read_text())["options"]["cpu"] == other
    with pytest.raises(ArtifactError, match=f"compiled for '{other}'"):
        Runtime(out)
