"""WebGPU build and in-browser run, measured against the CPU build of the same model.

``python tests/webgpu_bench.py --arch qwen2 --model tiny-random`` (``make bench-webgpu``) builds
the model for llvm and webgpu (timing compile and link), then runs both: the CPU build with the
Python runtime, the WebGPU build in headless Chromium (SwiftShader without a GPU).
``--artifact DIR`` skips the build and measures an existing folder that holds both libraries.
Prints a table of absolute numbers and WebGPU/CPU ratios. It lives with the tests, not in the
package, because it drives Chromium through their Playwright helper (browser_support.py), a
development dependency.
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


def _build(arch: str, model: str, out: pathlib.Path) -> dict[str, float]:
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.webgpu import target as webgpu

    webgpu.LINK_SECONDS.clear()
    result = build(
        BuildOptions(arch=arch, model=model, targets="llvm,webgpu", out=out, use_cache=False)
    )
    link = sum(webgpu.LINK_SECONDS)
    return {
        "compile_llvm_s": result.seconds.get("compile-llvm", 0.0),
        "compile_webgpu_s": result.seconds.get("compile-webgpu", 0.0) - link,
        "link_webgpu_s": link,
    }


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


BROWSER_JS = """async ([url, prompt, tokens]) => {
  const m = await import('/src/engine.js');
  const t0 = performance.now();
  const engine = await m.Engine.load(url);
  const loadMs = performance.now() - t0;
  const ids = engine.encodeChat(prompt);
  const prefills = [];
  for (let i = 0; i < 3; i++) {
    engine.reset();
    const e = engine.embed(ids);
    const s = performance.now();
    const l = engine.prefill(e);
    await engine.device.sync();
    prefills.push(performance.now() - s);
    e.dispose(); l.dispose();
  }
  const decodes = [];
  for (let i = 0; i < tokens; i++) {
    const e = engine.embed([i + 1]);
    const s = performance.now();
    const l = engine.decode(e);
    await engine.device.sync();
    decodes.push(performance.now() - s);
    e.dispose(); l.dispose();
  }
  decodes.sort((a, b) => a - b);
  engine.dispose();
  return {loadMs, timings: engine.loadTimings, prefillMs: Math.min(...prefills),
          decodeMs: decodes[Math.floor(decodes.length / 2)]};
}"""


def _browser(folder: pathlib.Path, tokens: int) -> dict[str, Any]:
    from browser_support import chromium

    from mlcpatch.serve import WEB_DIR, running_server

    with running_server(WEB_DIR, folder) as server, chromium(webgpu=True) as session:
        page = session.new_page(server.url + "index.html")
        url = f"/artifacts/{folder.resolve().name}/"
        return page.evaluate(BROWSER_JS, [url, PROMPT, tokens])


def _ratio(a: float, b: float) -> str:
    return f"{a / b:8.1f}x" if b else "       -"


def report(folder: pathlib.Path, build: dict[str, float] | None, tokens: int) -> dict[str, Any]:
    config = json.loads((folder / "mlc-chat-config.json").read_text())
    libs = config["model_lib"]
    wasm = (folder / libs["webgpu"]).stat().st_size
    so = (folder / libs["llvm"]).stat().st_size
    cpu = _cpu(folder, tokens)
    web = _browser(folder, tokens)
    t = web["timings"]
    rows = [
        ("library size (MB)", so / 1e6, wasm / 1e6),
        ("load (s)", cpu["load_s"], web["loadMs"] / 1000),
        ("  of which GPU pipeline compile (s)", 0.0, t["pipelinesMs"] / 1000),
        (f"prefill {cpu['prompt_tokens']} tokens (ms)", cpu["prefill_ms"], web["prefillMs"]),
        ("decode per token (ms)", cpu["decode_ms"], web["decodeMs"]),
    ]
    if build:
        rows.insert(
            1, ("compile, export+build (s)", build["compile_llvm_s"], build["compile_webgpu_s"])
        )
        rows.insert(2, ("link (s)", 0.0, build["link_webgpu_s"]))
    print(f"{folder.name}: {config['model_type']} {config['quantization']}")
    print(f"{'':38s}{'CPU (llvm)':>12s}{'WebGPU':>12s}{'ratio':>10s}")
    for name, a, b in rows:
        print(f"{name:38s}{a:12.3f}{b:12.3f}{_ratio(b, a)}")
    return {"cpu": cpu, "webgpu": web, "build": build, "wasm_bytes": wasm, "so_bytes": so}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/webgpu_bench.py")
    parser.add_argument("--artifact", type=pathlib.Path, help="existing folder (llvm+webgpu)")
    parser.add_argument("--arch", default="qwen2")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--tokens", type=int, default=16, help="decode steps to time")
    parser.add_argument("--json", type=pathlib.Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    build = None
    folder = args.artifact
    if folder is None:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="mlcpatch-bench-")) / f"bench-{args.arch}"
        build = _build(args.arch, args.model, folder)
    numbers = report(folder, build, args.tokens)
    if args.json:
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
