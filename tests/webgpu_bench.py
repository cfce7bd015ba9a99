"""The browser builds (WebGPU, wasm CPU) measured against the native CPU build of the same model.

``python tests/webgpu_bench.py --arch qwen2 --model tiny-random`` (``make bench-webgpu``) builds
the model for llvm, webgpu and wasm (timing compile and link), then runs each: the native CPU
build with the Python runtime, the WebGPU build in headless Chromium (SwiftShader without a
GPU) and the wasm CPU build in the same page (``device: "cpu"``).
``--artifact DIR`` skips the build and measures an existing folder (the browser libraries it
lacks are skipped). Prints a table of absolute numbers and ratios to the native build. It lives
with the tests, not in the package, because it drives Chromium through their Playwright helper
(browser_support.py), a development dependency.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

PROMPT = "Hello there! Please tell me a short story about the sea."


# Browser devices: the model_lib key of each one's library and its column title.
DEVICES = {"webgpu": ("webgpu", "WebGPU"), "cpu": ("wasm", "wasm CPU")}


def _build(arch: str, model: str, out: pathlib.Path, quant: str) -> dict[str, float]:
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.webgpu import target as webgpu

    targets = ["llvm", "webgpu", "wasm"]
    webgpu.LINK_SECONDS.clear()
    options = BuildOptions(
        arch=arch, model=model, quantization=quant, targets=",".join(targets), out=out
    )
    options.use_cache = False
    result = build(options)
    numbers = {"compile_llvm_s": result.seconds.get("compile-llvm", 0.0)}
    # Every .wasm link appends its seconds, in the order of the targets.
    for target, link in zip(targets[1:], webgpu.LINK_SECONDS, strict=True):
        numbers[f"compile_{target}_s"] = result.seconds.get(f"compile-{target}", 0.0) - link
        numbers[f"link_{target}_s"] = link
    return numbers


def _cpu(folder: pathlib.Path, tokens: int) -> dict[str, float]:
    from mlcpatch.runtime import Runtime

    t0 = time.perf_counter()
    rt = Runtime(folder)
    load = time.perf_counter() - t0
    ids = rt.encode_chat(PROMPT)
    prefills = []
    for _ in range(3):
        rt.reset()
        embeds = rt.embed(ids)
        t0 = time.perf_counter()
        rt.prefill(embeds)
        prefills.append(time.perf_counter() - t0)
    decodes = []
    for step in range(tokens):
        embed = rt.embed([step + 1])
        t0 = time.perf_counter()
        rt.decode(embed)
        decodes.append(time.perf_counter() - t0)
    return {
        "load_s": load,
        "prompt_tokens": len(ids),
        "prefill_ms": 1000 * min(prefills),
        "decode_ms": 1000 * statistics.median(decodes),
    }


def _browser(folder: pathlib.Path, tokens: int, devices: list[str]) -> dict[str, dict[str, Any]]:
    """Each device's figures, measured one after the other in one page."""
    from browser_support import TIME_ENGINE_JS, chromium

    from mlcpatch.serve import WEB_DIR, running_server

    with running_server(WEB_DIR, folder) as server, chromium(webgpu=True) as session:
        page = session.new_page(server.url + "index.html")
        url = f"/artifacts/{folder.resolve().name}/"
        figures = {}
        for d in devices:
            raw = page.evaluate(TIME_ENGINE_JS, [url, PROMPT, tokens, 3, {"device": d}])
            figures[d] = {
                "loadMs": raw["loadMs"],
                "timings": raw["timings"],
                "prefillMs": min(raw["prefills"]),
                "decodeMs": statistics.median(raw["decodes"]),
                "device": raw["deviceKind"],
            }
        return figures


def _ratio(a: float, b: float) -> str:
    return f"{a / b:8.2f}x" if b else "        -"


def report(
    folder: pathlib.Path, build: dict[str, float] | None, tokens: int, only: list[str] | None = None
) -> dict[str, Any]:
    config = json.loads((folder / "mlc-chat-config.json").read_text())
    libs = config["model_lib"]
    devices = [d for d, (lib, _) in DEVICES.items() if lib in libs and (not only or d in only)]
    sizes = {d: (folder / libs[DEVICES[d][0]]).stat().st_size for d in devices}
    so = (folder / libs["llvm"]).stat().st_size
    cpu = _cpu(folder, tokens)
    web = _browser(folder, tokens, devices)
    rows: list[tuple[str, float, list[float]]] = [
        ("library size (MB)", so / 1e6, [sizes[d] / 1e6 for d in devices]),
        ("load (s)", cpu["load_s"], [web[d]["loadMs"] / 1000 for d in devices]),
        (
            "  of which GPU pipeline compile (s)",
            0.0,
            [web[d]["timings"].get("pipelinesMs", 0.0) / 1000 for d in devices],
        ),
        (
            f"prefill {cpu['prompt_tokens']} tokens (ms)",
            cpu["prefill_ms"],
            [web[d]["prefillMs"] for d in devices],
        ),
        ("decode per token (ms)", cpu["decode_ms"], [web[d]["decodeMs"] for d in devices]),
    ]
    if build:
        rows.insert(
            1,
            (
                "compile, export+build (s)",
                build["compile_llvm_s"],
                [build.get(f"compile_{DEVICES[d][0]}_s", 0.0) for d in devices],
            ),
        )
        rows.insert(
            2, ("link (s)", 0.0, [build.get(f"link_{DEVICES[d][0]}_s", 0.0) for d in devices])
        )
    titles = [DEVICES[d][1] for d in devices]
    print(f"{folder.name}: {config['model_type']} {config['quantization']} (ratio: to native)")
    head = "".join(f"{t:>12s}{'ratio':>9s}" for t in titles)
    print(f"{'':38s}{'native CPU':>12s}{head}")
    for name, a, values in rows:
        cells = "".join(f"{b:12.3f}{_ratio(b, a)}" for b in values)
        print(f"{name:38s}{a:12.3f}{cells}")
    return {"cpu": cpu, "browser": web, "build": build, "library_bytes": sizes, "so_bytes": so}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/webgpu_bench.py")
    parser.add_argument("--artifact", type=pathlib.Path, help="existing folder (llvm + browser)")
    parser.add_argument("--arch", default="qwen2")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--quant", default="q0f32", help="q0f32 or q4f32_1 (SwiftShader: f32)")
    parser.add_argument(
        "--devices", default="webgpu,cpu", help="browser devices to measure (webgpu, cpu)"
    )
    parser.add_argument("--tokens", type=int, default=16, help="decode steps to time")
    parser.add_argument("--json", type=pathlib.Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    build = None
    folder = args.artifact
    if folder is None:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="mlcpatch-bench-")) / f"bench-{args.arch}"
        build = _build(args.arch, args.model, folder, args.quant)
    numbers = report(folder, build, args.tokens, args.devices.split(","))
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
