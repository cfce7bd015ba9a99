"""A q4f32_1 (4-bit) WebGPU build in headless Chromium (SwiftShader) against its CPU build.

One tiny Llama is built for llvm and webgpu with 4-bit weights: hidden size 48, so every weight
read along the hidden axis ends in a half-padded group, and a tied head, so the LM head is the
4-bit embedding table. The engine loads the uint32 / float32 shards straight into GPU buffers
and the kernels dequantize as they read; hidden states, logits and greedy tokens must match the
CPU runtime as closely as the q0f32 builds do (tests/test_browser_engine.py: both sides multiply
the same float32 weights, (code - 7) * scale being exact, and differ only in summation order).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from browser_support import chromium, engine_call, load_engine
from test_browser_engine import FORWARD_JS, TOL, TOL_LOGITS, _cpu_forward

from mlcpatch.runtime import Runtime
from mlcpatch.serve import WEB_DIR, Server, running_server

pytestmark = pytest.mark.browser

NAME = "tiny-llama48-q4f32_1"
URL = f"/artifacts/{NAME}/"
PROMPT = "Hello there! What is two plus two?"
CONFIG = {
    "hidden_size": 48,
    "intermediate_size": 96,
    # head_dim 16: TVM's WebGPU prefill kernel rejects head_dim 12 (tests/playground_support.py)
    "num_attention_heads": 3,
    "num_key_value_heads": 3,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from playground_support import _share_toolchain

    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.tiny import write_tiny_model
    from mlcpatch.build.webgpu.toolchain import ToolchainError, find_toolchain

    try:
        find_toolchain()
    except ToolchainError as exc:
        pytest.fail(f"WebGPU toolchain unavailable: {exc}")
    _share_toolchain()  # reuse an already built TVM web runtime instead of 2.5 min of make
    hf = write_tiny_model(tmp_path_factory.mktemp("hf-q4"), "llama", 4, config_overrides=CONFIG)
    root = tmp_path_factory.mktemp("q4-artifacts")
    opts = BuildOptions("llama", str(hf), "q4f32_1", "llvm,webgpu", out=root / NAME, progress=False)
    build(opts)
    return root


@pytest.fixture(scope="module")
def server(artifacts: pathlib.Path) -> Iterator[Server]:
    with running_server(WEB_DIR, artifacts) as srv:
        yield srv


@pytest.fixture(scope="module")
def page(server: Server) -> Iterator[Any]:
    with chromium(webgpu=True) as session:
        page = session.new_page(server.url + "index.html")
        try:
            load_engine(page, URL)
        except Exception:
            print("\n".join(session.console[-30:]))
            raise
        yield page


@pytest.fixture(scope="module")
def cpu(artifacts: pathlib.Path) -> Runtime:
    return Runtime(artifacts / NAME)


def test_artifact_holds_packed_weights(artifacts: pathlib.Path) -> None:
    cache = json.loads((artifacts / NAME / "tensor-cache.json").read_text())
    dtypes = {r["name"]: r["dtype"] for shard in cache["records"] for r in shard["records"]}
    assert dtypes["model.embed_tokens.q_weight"] == "uint32"
    assert dtypes["model.embed_tokens.q_scale"] == "float32"
    assert not any(n.endswith("proj.weight") or n.endswith("tokens.weight") for n in dtypes)


def test_webgpu_q4f32_1_matches_cpu(page: Any, cpu: Runtime) -> None:
    ids = cpu.encode_chat(PROMPT)
    web = engine_call(page, URL, FORWARD_JS, {"ids": ids, "next": 7})
    ref = _cpu_forward(cpu, ids, 7)
    errors = {}
    for key, expected in ref.items():
        got = np.asarray(web[key], np.float32).reshape(expected.shape)
        errors[key] = float(np.abs(got - expected).max())
    print(f"q4f32_1: max |webgpu - cpu| = {errors}")
    assert errors["embed"] == 0.0  # a gather of (code - 7) * scale: the same float32 products
    assert errors["hidden"] <= TOL and errors["decodeHidden"] <= TOL, errors
    assert errors["prefillLogits"] <= TOL_LOGITS and errors["decodeLogits"] <= TOL_LOGITS, errors


def test_webgpu_q4f32_1_greedy_tokens_match_cpu(page: Any, cpu: Runtime) -> None:
    ids = cpu.encode_chat(PROMPT)
    expected = cpu.generate(prompt_ids=ids, max_new_tokens=16, greedy=True, stop_token_ids=[])
    web = engine_call(
        page,
        URL,
        "return await engine.generate({promptIds: arg}, "
        "{maxNewTokens: 16, greedy: true, stopTokenIds: []});",
        ids,
    )
    print(f"q4f32_1 on SwiftShader: {web['timings']['decodeMsPerToken']:.1f} ms/token")
    assert web["outputIds"] == expected.output_ids
    assert len(web["outputIds"]) == 16
