"""Driving a headless Chromium with WebGPU from Python (browser tests and tests/webgpu_bench.py).

Uses Playwright for Python with the system's Chromium (never ``playwright install``). Without
a GPU, Chromium's WebGPU runs on SwiftShader, and only with ``--enable-unsafe-webgpu``; the
other flags keep a closed network from flooding the browser with refused connections.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

BASE_ARGS = (
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-default-apps",
)
WEBGPU_ARGS = ("--enable-unsafe-webgpu",)
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserUnavailable(RuntimeError):
    """No usable Chromium or Playwright; the message says what to install."""


def find_chromium() -> str:
    """$MLCPATCH_CHROMIUM, else the first Chromium on PATH."""
    env = os.environ.get("MLCPATCH_CHROMIUM")
    if env:
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserUnavailable(
        "no Chromium found: install it with `apt-get install -y chromium` "
        "(or set MLCPATCH_CHROMIUM to a Chromium/Chrome binary)"
    )


class BrowserSession:
    """One Chromium process with a fresh profile; pages log their console to ``console``."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.console: list[str] = []

    def new_page(self, url: str | None = None) -> Any:
        page = self.context.new_page()
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))
        if url is not None:
            page.goto(url)
        return page


_playwright: Any = None
_users = 0


@contextlib.contextmanager
def _shared_playwright() -> Iterator[Any]:
    """One Playwright driver per process: its sync API refuses to start a second one while
    another is running (as it is when a test session holds a browser open)."""
    global _playwright, _users
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        raise BrowserUnavailable(
            "Playwright for Python is missing: `pip install playwright` "
            "(do not run `playwright install`; the system Chromium is used)"
        ) from exc
    if _playwright is None:
        _playwright = sync_playwright().start()
    _users += 1
    try:
        yield _playwright
    finally:
        _users -= 1
        if _users == 0:
            _playwright.stop()
            _playwright = None


@contextlib.contextmanager
def chromium(webgpu: bool = True, timeout_ms: float = 600_000) -> Iterator[BrowserSession]:
    """A headless Chromium (with WebGPU unless ``webgpu=False``) for the duration of the block."""
    executable = find_chromium()
    args = [*BASE_ARGS, *(WEBGPU_ARGS if webgpu else ())]
    profile = tempfile.mkdtemp(prefix="mlcpatch-chromium-")
    try:
        with _shared_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=executable, headless=True, args=args
            )
            context.set_default_timeout(timeout_ms)
            try:
                yield BrowserSession(context)
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


# The engine loaded once per page and kept on window.__engines, keyed by artifact URL.
LOAD_ENGINE_JS = """async ([url, options]) => {
  const m = await import('/src/engine.js');
  window.__engines = window.__engines || {};
  const t0 = performance.now();
  const engine = await m.Engine.load(url, options || {});
  window.__engines[url] = engine;
  return { loadMs: performance.now() - t0, timings: engine.loadTimings,
           hiddenSize: engine.hiddenSize, vocabSize: engine.vocabSize };
}"""


def load_engine(page: Any, url: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the artifact at ``url`` in ``page``; its load timings."""
    return page.evaluate(LOAD_ENGINE_JS, [url, options or {}])


def engine_call(page: Any, url: str, body: str, arg: Any = None) -> Any:
    """Evaluate ``body`` (an async function body using ``engine`` and ``arg``) in the page."""
    script = f"async ([url, arg]) => {{ const engine = window.__engines[url]; {body} }}"
    return page.evaluate(script, [url, arg])


def web_root() -> pathlib.Path:
    from mlcpatch.serve import WEB_DIR

    return WEB_DIR


# The browser benchmarks' timing run (tests/browser_peers_bench.py, tests/webgpu_bench.py): load
# the engine, time `repeats` prefills of the chat-templated prompt and `tokens` single decodes
# (each waited for on the device); the raw milliseconds come back, the callers summarise them.
TIME_ENGINE_JS = """async ([url, prompt, tokens, repeats, options]) => {
  const m = await import('/src/engine.js');
  const t0 = performance.now();
  const engine = await m.Engine.load(url, options);
  const loadMs = performance.now() - t0;
  const ids = engine.encodeChat(prompt);
  const prefills = [];
  for (let i = 0; i < repeats; i++) {
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
  let adapter = null;
  if (options.device !== 'cpu' && navigator.gpu) {
    const a = await navigator.gpu.requestAdapter();
    const info = a ? [a.info.vendor, a.info.architecture, a.info.description] : [];
    adapter = info.filter(Boolean).join(' ') || null;
  }
  const out = { adapter, loadMs, timings: engine.loadTimings, promptTokens: ids.length,
                prefills, decodes, deviceKind: engine.deviceKind ?? null,
                libraryName: engine.libraryName ?? null, threads: engine.threads ?? 1,
                workerTasks: engine.workerTasks?.() ?? 0 };
  engine.dispose();
  return out;
}"""
