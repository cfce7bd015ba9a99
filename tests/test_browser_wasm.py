"""The wasm CPU build in a real headless Chromium: the engine's fallback without WebGPU.

Three tiny random models are built once for the module: tiny-qwen2 for llvm, webgpu and wasm
(so the choice between its two browser libraries can be watched), tiny-llama48 (q0f32) and
tiny-qwen2-q4 (q4f32_1: the 4-bit kernels compiled for wasm32) for llvm and wasm only. In a
Chromium started without WebGPU, the engine must pick the CPU library on its own and compute
what the native CPU build computes (hidden states, logits, greedy tokens); `device` and
`?device=` must force or refuse a device as documented (web/API.md, "Devices"); the chat page
and the playground must say which device runs and run on it (the playground's latent loop equal
to Python's).
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from browser_support import BrowserSession, chromium, engine_call, load_engine
from playground_support import build_models, python_run, write_links
from test_browser_engine import FORWARD_JS, TOL, TOL_LOGITS, _cpu_forward
from test_playground import assert_same_run

from mlcpatch.runtime import Runtime
from mlcpatch.serve import WEB_DIR, Server, running_server

pytestmark = [pytest.mark.browser, pytest.mark.heavy]

QWEN, LLAMA, QWEN4 = "tiny-qwen2", "tiny-llama48", "tiny-qwen2-q4"
PROMPT = "Hello there! What is two plus two?"
TOKENS = 12
FINISHED = "['done', 'error', 'stopped', 'no-webgpu'].includes(document.body.dataset.state)"
# Short latent chains: on random tiny models the loop is chaotic (see test_playground.py), and
# float rounding differences must not flip a greedy token.
SETTINGS = {"rounds": 1, "latentSteps": 2, "maxNewTokens": 8, "textTokens": 8}
QUESTION = "What is 6 times 7?"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from mlcpatch.build.webgpu.toolchain import ToolchainError, find_toolchain

    try:
        find_toolchain()
    except ToolchainError as exc:
        pytest.fail(f"WebGPU/wasm toolchain unavailable: {exc}")
    root = tmp_path_factory.mktemp("wasm-builds")
    build_models(root, [QWEN], targets="llvm,webgpu,wasm")
    build_models(root, [LLAMA, QWEN4], targets="llvm,wasm")
    return root


@pytest.fixture(scope="module")
def server(artifacts: pathlib.Path) -> Iterator[Server]:
    with running_server(WEB_DIR, artifacts) as srv:
        yield srv


@pytest.fixture(scope="module")
def no_gpu() -> Iterator[BrowserSession]:
    """Chromium without --enable-unsafe-webgpu: navigator.gpu gives no adapter."""
    with chromium(webgpu=False) as session:
        yield session


@pytest.fixture(scope="module")
def page(no_gpu: BrowserSession, server: Server) -> Any:
    page = no_gpu.new_page(server.url + "index.html")
    for name in (QWEN, LLAMA, QWEN4):
        load_engine(page, _url(name))
    return page


def _url(name: str) -> str:
    return f"/artifacts/{name}/"


def _device(page: Any, name: str) -> dict[str, str]:
    return engine_call(
        page,
        _url(name),
        "return {kind: engine.deviceKind, label: engine.deviceLabel, "
        "reason: engine.deviceReason, library: engine.libraryName};",
    )


def test_libraries_listed_per_target(artifacts: pathlib.Path) -> None:
    from mlcpatch.artifact import read_manifest, verify_artifact

    every = (
        (QWEN, {"llvm", "webgpu", "wasm"}),
        (LLAMA, {"llvm", "wasm"}),
        (QWEN4, {"llvm", "wasm"}),
    )
    for name, targets in every:
        manifest = verify_artifact(artifacts / name, exact=True)
        assert set(manifest.libraries) == targets
        assert manifest.libraries["wasm"] == f"{name}-cpu.wasm"
        assert read_manifest(artifacts / name).options["targets"] == sorted(
            targets, key=["llvm", "webgpu", "wasm"].index
        )
        # A real wasm module (magic and version 1), not a native library.
        assert (artifacts / name / f"{name}-cpu.wasm").read_bytes()[:8] == b"\0asm\1\0\0\0"


@pytest.mark.parametrize("name", [QWEN, LLAMA])
def test_without_webgpu_the_cpu_library_runs(page: Any, name: str) -> None:
    device = _device(page, name)
    assert device["kind"] == "cpu"
    # The default thread count: one per physical core (half the logical CPUs), at most 8.
    logical = page.evaluate("navigator.hardwareConcurrency")
    threads = max(1, min(8, logical // 2))
    assert device["label"] == f"CPU (WebAssembly), {threads} thread{'s' * (threads > 1)}"
    assert device["library"] == f"{name}-cpu.wasm"
    if name == QWEN:  # it has a WebGPU library too: the browser is what lacks
        assert "WebGPU" in device["reason"] and "no usable" in device["reason"]
    else:
        assert device["reason"] == "this artifact has no WebGPU library"


@pytest.mark.parametrize("name", [QWEN, LLAMA, QWEN4])
def test_hidden_states_and_logits_match_native_cpu(
    page: Any, artifacts: pathlib.Path, name: str
) -> None:
    rt = Runtime(artifacts / name)
    ids = rt.encode_chat(PROMPT)
    web = engine_call(page, _url(name), FORWARD_JS, {"ids": ids, "next": ids[-1]})
    cpu = _cpu_forward(rt, ids, ids[-1])
    for key, tol in (
        ("embed", TOL),
        ("hidden", TOL),
        ("decodeHidden", TOL),
        ("prefillLogits", TOL_LOGITS),
        ("decodeLogits", TOL_LOGITS),
    ):
        got = np.asarray(web[key], dtype=np.float32)
        want = np.asarray(cpu[key], dtype=np.float32).reshape(-1)
        assert got.shape == want.shape, key
        err = float(np.abs(got - want).max())
        print(f"{name} {key}: max |wasm - native| = {err:.2e}")
        assert err <= tol, f"{key}: {err}"
    assert web["hiddenShape"] == [len(ids), rt.hidden_size]
    assert web["position"] == len(ids) + 1


@pytest.mark.parametrize("name", [QWEN, LLAMA, QWEN4])
def test_greedy_tokens_match_native_cpu(page: Any, artifacts: pathlib.Path, name: str) -> None:
    rt = Runtime(artifacts / name)
    ids = rt.encode_chat(PROMPT)
    want = rt.generate(prompt_ids=ids, max_new_tokens=TOKENS, greedy=True, stop_token_ids=[])
    web = engine_call(
        page,
        _url(name),
        "return await engine.generate({promptIds: arg.ids}, "
        "{maxNewTokens: arg.n, greedy: true, stopTokenIds: []});",
        {"ids": ids, "n": TOKENS},
    )
    print(f"{name}: wasm decode {web['timings']['decodeMsPerToken']:.2f} ms/token")
    assert web["outputIds"] == want.output_ids
    assert len(web["outputIds"]) == TOKENS


THREADS = 2
THREADS_INFO_JS = (
    "return {threads: engine.threads, label: engine.deviceLabel, reason: engine.deviceReason, "
    "isolated: crossOriginIsolated, workerTasks: engine.workerTasks()};"
)


def _strip_isolation(route: Any) -> None:
    """Serve the page without its COOP/COEP headers: not cross-origin isolated."""
    response = route.fetch()
    headers = {
        k: v for k, v in response.headers.items() if not k.lower().startswith("cross-origin-")
    }
    route.fulfill(response=response, headers=headers)


@pytest.mark.parametrize("isolated", [True, False], ids=["isolated", "not-isolated"])
def test_threads_on_the_cpu_match_native(
    no_gpu: BrowserSession, server: Server, artifacts: pathlib.Path, isolated: bool
) -> None:
    """threads: 2 on a cross-origin isolated page runs the parallel loops on a worker too (its
    tasks are counted) and computes what the native build computes; on a page that is not
    isolated the same library runs on one thread (its shared memory switched off) and says why."""
    page = no_gpu.new_page()
    if not isolated:
        page.route("**/*", _strip_isolation)
    page.goto(server.url + "index.html")
    assert page.evaluate("crossOriginIsolated") is isolated
    for name in (QWEN4, LLAMA):  # the 4-bit kernels and the f32 ones
        url = _url(name)
        load_engine(page, url, {"device": "cpu", "threads": THREADS})
        rt = Runtime(artifacts / name)
        ids = rt.encode_chat(PROMPT)
        web = engine_call(page, url, FORWARD_JS, {"ids": ids, "next": ids[-1]})
        cpu = _cpu_forward(rt, ids, ids[-1])
        for key, tol in (("hidden", TOL), ("decodeHidden", TOL), ("decodeLogits", TOL_LOGITS)):
            got = np.asarray(web[key], dtype=np.float32)
            err = float(np.abs(got - np.asarray(cpu[key], np.float32).reshape(-1)).max())
            print(f"{name} {THREADS} threads {key}: max |wasm - native| = {err:.2e}")
            assert err <= tol, f"{key}: {err}"
        want = rt.generate(prompt_ids=ids, max_new_tokens=TOKENS, greedy=True, stop_token_ids=[])
        got = engine_call(
            page,
            url,
            "return (await engine.generate({promptIds: arg.ids}, "
            "{maxNewTokens: arg.n, greedy: true, stopTokenIds: []})).outputIds;",
            {"ids": ids, "n": TOKENS},
        )
        assert got == want.output_ids
        info = engine_call(page, url, THREADS_INFO_JS)
        if isolated:
            assert info["threads"] == THREADS and info["label"].endswith(f", {THREADS} threads")
            assert info["workerTasks"] > 0, info  # the worker ran loop tasks
        else:
            assert info["threads"] == 1 and info["label"].endswith(", 1 thread"), info
            assert "not cross-origin isolated" in info["reason"], info
            assert info["workerTasks"] == 0, info
        engine_call(page, url, "engine.dispose(); delete window.__engines[url]; return 1;")
    page.close()


LOAD_ERROR_JS = """async ([url, options]) => {
  const m = await import('/src/engine.js');
  try {
    const engine = await m.Engine.load(url, options);
    const kind = engine.deviceKind;
    engine.dispose();
    return {ok: kind};
  } catch (err) {
    return {name: err.name, message: err.message};
  }
}"""


def _load_result(page: Any, name: str, device: str, **options: Any) -> dict[str, str]:
    return page.evaluate(LOAD_ERROR_JS, [_url(name), {"device": device, **options}])


def test_bad_thread_counts_are_refused(page: Any) -> None:
    for bad in (0, -1, 1.5, "many", 65):
        got = _load_result(page, LLAMA, "cpu", threads=bad)
        assert got["name"] == "ThreadsError", got
        assert "threads must be" in got["message"] and str(bad) in got["message"], got


def test_device_option_forces_or_refuses(page: Any) -> None:
    # Asked for, the CPU library runs; WebGPU in this browser cannot.
    assert _load_result(page, QWEN, "cpu") == {"ok": "cpu"}
    got = _load_result(page, QWEN, "webgpu")
    assert got["name"] == "WebGPUUnavailableError", got
    # A device the folder has no library for: a DeviceError naming what it has.
    got = _load_result(page, LLAMA, "webgpu")
    assert got["name"] == "DeviceError", got
    assert "no webgpu library" in got["message"] and "model_lib has llvm, wasm" in got["message"]
    got = _load_result(page, LLAMA, "gpu")
    assert got["name"] == "DeviceError" and "unknown device" in got["message"], got


def test_chat_page_runs_on_the_cpu_and_says_so(no_gpu: BrowserSession, server: Server) -> None:
    page = no_gpu.new_page(server.url + f"index.html?model={QWEN}")
    try:
        page.wait_for_function(
            "['ready', 'load-error', 'no-webgpu', 'error'].includes(document.body.dataset.state)",
            timeout=120_000,
        )
        assert page.evaluate("document.body.dataset.state") == "ready"
        assert page.locator("#no-webgpu").is_hidden()
        assert "WebGPU unavailable" in page.inner_text("#gpu-status")
        assert "CPU (WebAssembly)" in page.inner_text("#gpu-status")
        status = page.inner_text("#device-status")
        assert status.startswith("Running on CPU (WebAssembly)"), status
        # Every model is offered (each has a CPU library), marked as running on the CPU.
        labels = page.locator("#model-select option").all_inner_texts()
        assert len(labels) == 3 and all("on the CPU" in label for label in labels), labels
        page.check("#greedy")
        page.fill("#max-tokens", "6")
        page.fill("#prompt", "What is two plus two?")
        page.click("#send")
        page.wait_for_function(
            "document.querySelector('#stats').textContent.includes('tokens;')", timeout=120_000
        )
        assert page.locator(".message.assistant").count() == 1
    finally:
        page.close()


def test_chat_page_rejects_an_unknown_device(no_gpu: BrowserSession, server: Server) -> None:
    page = no_gpu.new_page(server.url + "index.html?device=gpu")
    try:
        page.wait_for_function("document.body.dataset.state === 'error'", timeout=60_000)
        assert 'unknown device "gpu"' in page.inner_text("body")
    finally:
        page.close()


def test_with_webgpu_auto_takes_it_and_device_cpu_forces_the_cpu(server: Server) -> None:
    with chromium(webgpu=True) as session:
        page = session.new_page(server.url + "index.html")
        assert _load_result(page, QWEN, "auto") == {"ok": "webgpu"}
        # The folder without a WebGPU library runs on the CPU even where WebGPU is.
        assert _load_result(page, LLAMA, "auto") == {"ok": "cpu"}
        page.goto(server.url + f"index.html?model={QWEN}&device=cpu")
        page.wait_for_function(
            "['ready', 'load-error', 'error'].includes(document.body.dataset.state)",
            timeout=120_000,
        )
        assert page.evaluate("document.body.dataset.state") == "ready"
        status = page.inner_text("#device-status")
        assert "CPU (WebAssembly)" in status and "device=cpu" in status, status
        assert "device=cpu" in page.inner_text("#gpu-status")


@pytest.mark.parametrize("threads", ["auto", "2"])
def test_playground_latent_loop_on_the_cpu_equals_python(
    no_gpu: BrowserSession,
    server: Server,
    artifacts: pathlib.Path,
    tmp_path: pathlib.Path,
    threads: str,
) -> None:
    """The playground's engines live in a Worker, so with ?threads=2 the thread pool's workers
    are started from a worker and its engine thread sleeps on the memory between tasks (the
    page's main thread may only spin): the loop must still equal Python's."""
    qwen = artifacts / QWEN
    links = write_links("sequential", [qwen] * 3, tmp_path / "links")
    page = no_gpu.new_page(
        server.url + f"playground.html?model={QWEN}&pattern=sequential&threads={threads}"
    )
    try:
        page.wait_for_function(
            "['idle', 'error', 'no-webgpu'].includes(document.body.dataset.state)",
            timeout=120_000,
        )
        assert page.evaluate("document.body.dataset.state") == "idle"
        assert "CPU (WebAssembly)" in page.inner_text("#gpu-status")
        for selector, key in (
            ("#rounds", "rounds"),
            ("#latent-steps", "latentSteps"),
            ("#max-new-tokens", "maxNewTokens"),
            ("#text-tokens", "textTokens"),
        ):
            page.fill(selector, str(SETTINGS[key]))
        before = page.evaluate("window.playground.linkReads")
        page.set_input_files(
            "#links-file", [str(links / "links.json"), str(links / "links.safetensors")]
        )
        page.wait_for_function(f"window.playground.linkReads > {before}")
        page.fill("#question", QUESTION)
        page.evaluate("document.body.dataset.state = 'clicked'")
        page.click("#run-latent")
        page.wait_for_function(FINISHED, timeout=300_000)
        got = page.evaluate(
            "({state: document.body.dataset.state, result: window.playground.results.latent, "
            "error: window.playground.error, devices: window.playground.devices})"
        )
        assert got["state"] == "done", got["error"]
        assert got["devices"][QWEN]["device"] == "cpu"
        assert f"{QWEN} on CPU (WebAssembly)" in page.inner_text("#device-status")
        if threads == "2":
            assert got["devices"][QWEN]["label"] == "CPU (WebAssembly), 2 threads", got
        py = python_run("latent", "sequential", [qwen] * 3, QUESTION, SETTINGS, links)
        assert_same_run(got["result"], py)
    finally:
        page.close()
