"""Browser peers: wllama (llama.cpp in WebAssembly) against our builds, in one headless Chromium.

``python tests/browser_peers_bench.py`` (``make bench-browser-peers``) serves web/ and a staging
copy of the artifact folder (hard links, plus the GGUF file the weights came from) with
``mlcpatch.serve`` on 127.0.0.1, and runs one page per leg, one after another:

- wllama (``@wllama/wllama``, pinned in web/package.json) on the SmolLM2-135M Q4_1 GGUF, on the
  CPU (``n_gpu_layers: 0``) with ``--threads`` threads (multi-threaded only on a cross-origin
  isolated page, which the server makes it; the JSON says what wllama reported);
- ours, wasm CPU: the artifact's wasm32 CPU library (``model_lib.wasm``), loaded with the
  engine's ``device: "cpu"`` and ``threads: --threads`` options (worker threads on the shared
  memory of the isolated page; the JSON says how many ran and how many loop tasks the workers
  took); reported as "not built" when the folder has none;
- ours, WebGPU: the artifact's WebGPU library, for reference. Without a GPU this is SwiftShader
  (about 20 s per SmolLM2 token here), so it gets fewer decode steps (``--webgpu-tokens``);
- ours, native CPU (outside the browser, for the wasm/native ratio): the same artifact's llvm
  library through ``python -m mlcpatch.peers.legs ours`` with ``TVM_NUM_THREADS=--threads``.

Each leg: load time, prefill tok/s (the same chat-templated prompt), decode tok/s. wllama's
prefill/decode figures are its own timings (llama.cpp's ``prompt_per_second`` /
``predicted_per_second``); ours are the page's ``performance.now()`` around each call, with a
device sync. It lives with the tests because it drives Chromium through their Playwright helper.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from mlcpatch.peers.main import DEFAULT_PROMPT
from mlcpatch.peers.report import write_json, write_png

DEFAULT_ARTIFACT = pathlib.Path("artifacts/smollm2-135m-q4f32_1-browser")
GGUF_NAME = "peer-model.gguf"
WLLAMA_PACKAGE = "node_modules/@wllama/wllama"
LEGS = ("wllama", "ours-wasm", "ours-webgpu", "ours-native")
FIELDS = ("prefill_tok_s", "decode_tok_s", "load_s")
PANELS = (
    ("prefill (tok/s)", "prefill_tok_s"),
    ("decode (tok/s)", "decode_tok_s"),
    ("load (s)", "load_s"),
)

WLLAMA_JS = """async ([ggufUrl, prompt, tokens, repeats, threads]) => {
  const { Wllama } = await import('/node_modules/@wllama/wllama/esm/index.js');
  const wllama = new Wllama(
    { default: '/node_modules/@wllama/wllama/esm/wasm/wllama.wasm' },
    { suppressNativeLog: true, allowOffline: false },
  );
  const t0 = performance.now();
  await wllama.loadModelFromUrl(ggufUrl, {
    n_threads: threads, n_gpu_layers: 0, n_ctx: 1024, n_batch: 512, useCache: false,
  });
  const loadMs = performance.now() - t0;
  const runs = [];
  for (let i = 0; i < repeats; i++) {
    const res = await wllama.createCompletion({
      prompt, max_tokens: tokens, temperature: 0, ignore_eos: true, cache_prompt: false,
    });
    runs.push({ timings: res.timings, usage: res.usage, text: res.choices[0].text });
  }
  const info = {
    multithread: wllama.isMultithread(), threads: wllama.getNumThreads(),
    webgpu: wllama.isSupportWebGPU(), crossOriginIsolated: self.crossOriginIsolated,
  };
  await wllama.exit();
  return { loadMs, runs, info };
}"""


def _median(values: list[float]) -> float:
    return statistics.median(values)


def stage(artifact: pathlib.Path, gguf: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
    """``root/<name>``: the artifact's files hard-linked (copied across file systems), plus the
    GGUF file, so one server root holds both models."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    folder = root / artifact.resolve().name
    shutil.copytree(artifact, folder, copy_function=link)
    link(str(gguf), str(folder / GGUF_NAME))
    return folder


def chat_text(artifact: pathlib.Path, prompt: str) -> str:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(artifact))
    return tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def wllama_leg(page: Any, url: str, text: str, tokens: int, repeats: int, threads: int) -> dict:
    raw = page.evaluate(WLLAMA_JS, [url, text, tokens, repeats, threads])
    timings = [r["timings"] for r in raw["runs"]]
    return {
        "engine": "wllama (GGUF Q4_1, CPU)",
        "load_s": raw["loadMs"] / 1000,
        "prompt_tokens": timings[0]["prompt_n"],
        "prefill_tok_s": _median([t["prompt_per_second"] for t in timings]),
        "decode_tokens": timings[0]["predicted_n"],
        "decode_tok_s": _median([t["predicted_per_second"] for t in timings]),
        "threads": raw["info"]["threads"],
        "info": raw["info"],
        "text": raw["runs"][0]["text"],
    }


def ours_leg(
    page: Any, url: str, name: str, prompt: str, tokens: int, repeats: int, options: dict
) -> dict:
    from browser_support import TIME_ENGINE_JS

    raw = page.evaluate(TIME_ENGINE_JS, [url, prompt, tokens, repeats, options])
    n = raw["promptTokens"]
    return {
        "engine": name,
        "load_s": raw["loadMs"] / 1000,
        "prompt_tokens": n,
        "prefill_tok_s": n / (_median(raw["prefills"]) / 1000),
        "decode_tokens": tokens,
        "decode_tok_s": 1000 / _median(raw["decodes"]),
        "device_kind": raw["deviceKind"],
        "webgpu_adapter": raw["adapter"],
        "library": raw["libraryName"],
        "load_timings_ms": raw["timings"],
        "threads": raw["threads"],
        "worker_tasks": raw["workerTasks"],
    }


def native_leg(args: argparse.Namespace) -> dict:
    """Our llvm library on this machine, same prompt, tokens and threads as the browser legs."""
    from mlcpatch.peers.main import _leg_args, chat_prompt_ids, run_leg

    if "llvm" not in args.libraries:
        return {"engine": "ours (native CPU)", "skipped": "not built: no llvm library"}
    ids = chat_prompt_ids(args.artifact, args.prompt)
    cmd = [sys.executable, "-m", "mlcpatch.peers.legs", "ours", "--model", str(args.artifact)]
    cmd += _leg_args(ids, args.tokens, args.repeats, args.threads)
    result = run_leg(cmd, args.threads, "ours (native CPU)")
    result["engine"] = "ours (native CPU)"
    result.pop("output_ids", None)
    return result


def one_leg(leg: str, server_url: str, base: str, text: str, args: argparse.Namespace) -> dict:
    """Run one leg in its own Chromium: the CPU legs without WebGPU, so nothing of theirs can
    land on the (software) GPU adapter; the WebGPU leg with it."""
    from browser_support import chromium

    if leg == "ours-native":
        return native_leg(args)
    libraries = args.libraries
    if leg == "ours-wasm" and "wasm" not in libraries:
        return {
            "engine": "ours (wasm CPU)",
            "skipped": f"not built: the artifact has no wasm library (model_lib has "
            f"{', '.join(libraries)}); build it with --target wasm",
        }
    if leg == "wllama" and not (args.web_root / WLLAMA_PACKAGE / "package.json").is_file():
        return {
            "engine": "wllama (GGUF Q4_1, CPU)",
            "skipped": f"not installed: run `npm ci` in {args.web_root} (a devDependency)",
        }
    if leg == "ours-webgpu" and "webgpu" not in libraries:
        return {"engine": "ours (WebGPU)", "skipped": "not built: no webgpu library"}
    with chromium(webgpu=leg == "ours-webgpu") as session:
        page = session.new_page(server_url + "index.html")
        start = time.perf_counter()
        try:
            if leg == "wllama":
                url = base + GGUF_NAME
                result = wllama_leg(page, url, text, args.tokens, args.repeats, args.threads)
            elif leg == "ours-wasm":
                name = "ours (wasm CPU)"
                tokens, repeats = args.tokens, args.repeats
                options = {"device": "cpu", "threads": args.threads}
                result = ours_leg(page, base, name, args.prompt, tokens, repeats, options)
            else:
                tokens = args.webgpu_tokens
                result = ours_leg(page, base, "ours (WebGPU)", args.prompt, tokens, 1, {})
        except Exception as exc:  # a leg that fails is reported, the others still run
            result = {"engine": leg, "error": f"{type(exc).__name__}: {exc}"[:500]}
        result["wall_s"] = time.perf_counter() - start
        result["console_tail"] = session.console[-8:]
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mlcpatch.serve import WEB_DIR, running_server

    config = json.loads((args.artifact / "mlc-chat-config.json").read_text())
    args.libraries = config.get("model_lib") or {}
    args.web_root = WEB_DIR
    text = chat_text(args.artifact, args.prompt)
    legs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mlcpatch-browser-peers-") as tmp:
        folder = stage(args.artifact, args.gguf, pathlib.Path(tmp))
        with running_server(WEB_DIR, pathlib.Path(tmp)) as server:
            for leg in args.legs:
                result = one_leg(leg, server.url, f"/artifacts/{folder.name}/", text, args)
                print(json.dumps(result)[:300], file=sys.stderr)
                legs.append(result)
    by_engine = {leg["engine"]: leg for leg in legs if "decode_tok_s" in leg}
    wasm, native = by_engine.get("ours (wasm CPU)"), by_engine.get("ours (native CPU)")
    ratios = {}
    if wasm and native:
        for field in ("prefill_tok_s", "decode_tok_s"):
            ratios[f"wasm_vs_native_{field}"] = wasm[field] / native[field]
    return {
        "prompt": args.prompt,
        "threads": args.threads,
        "ratios": ratios,
        "artifact": str(args.artifact),
        "quantization": config.get("quantization"),
        "libraries": args.libraries,
        "gguf": str(args.gguf),
        "browser": "headless Chromium (/usr/bin/chromium); WebGPU (SwiftShader without a GPU) "
        "only for the WebGPU leg",
        "load_average_at_end": os.getloadavg(),
        "cores": os.cpu_count(),
        "legs": legs,
    }


def print_table(results: dict[str, Any]) -> None:
    print(f"{'engine':28s}{'prompt':>8s}{'prefill tok/s':>15s}{'decode tok/s':>14s}{'load s':>9s}")
    for leg in results["legs"]:
        if "error" in leg or "skipped" in leg:
            print(f"{leg['engine']:28s}  {leg.get('error') or leg['skipped']}")
            continue
        print(
            f"{leg['engine']:28s}{leg['prompt_tokens']:8d}{leg['prefill_tok_s']:15.2f}"
            f"{leg['decode_tok_s']:14.2f}{leg['load_s']:9.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/browser_peers_bench.py")
    parser.add_argument("--artifact", type=pathlib.Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--gguf", type=pathlib.Path, help="default: SmolLM2-135M Q4_1 (PyPI)")
    parser.add_argument("--legs", default=",".join(LEGS), help=f"subset of {LEGS}")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tokens", type=int, default=32, help="decode steps (CPU legs)")
    parser.add_argument("--webgpu-tokens", type=int, default=3, help="decode steps (WebGPU)")
    parser.add_argument("--repeats", type=int, default=3, help="prefills timed (CPU legs)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument(
        "--json", type=pathlib.Path, default=pathlib.Path("bench/browser-peers.json")
    )
    parser.add_argument("--png", type=pathlib.Path, default=pathlib.Path("bench/browser-peers.png"))
    args = parser.parse_args(argv)
    args.legs = [leg.strip() for leg in args.legs.split(",") if leg.strip()]
    bad = [leg for leg in args.legs if leg not in LEGS]
    if bad or not args.legs:
        parser.error(f"unknown leg(s) {bad}; choose from {', '.join(LEGS)}")
    if args.threads < 1 or args.tokens < 1 or args.webgpu_tokens < 1 or args.repeats < 1:
        parser.error("--threads, --tokens, --webgpu-tokens and --repeats must be at least 1")
    if not (args.artifact / "mlc-chat-config.json").is_file():
        parser.error(
            f"{args.artifact}: not an artifact folder (build it: mlcpatch build --arch llama "
            "--model pypi:smollm2-135m --quant q4f32_1 --target llvm,webgpu[,wasm] "
            f"--out {args.artifact})"
        )
    if args.gguf is None:
        from mlcpatch.build.source import pypi_model_file

        args.gguf = pypi_model_file("smollm2-135m")
    results = run(args)
    print_table(results)
    for name, value in results["ratios"].items():
        print(f"{name}: {value:.2f}x (target for decode: >= 0.5x)")
    write_json(args.json, results, FIELDS)
    title = f"SmolLM2-135M in headless Chromium (and native), {args.threads} threads"
    write_png(args.png, results, title, PANELS)
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
