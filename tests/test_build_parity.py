"""q0f32 CPU builds of tiny random models agree with transformers (real TVM builds, no mocks)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_VARIANTS

from mlcpatch.runtime import ArtifactError, Runtime

pytestmark = pytest.mark.heavy

VARIANTS = sorted(TINY_VARIANTS)
F32_TOL = 1e-4
PROMPT = "What is two plus two? Think step by step."


@pytest.fixture(scope="module")
def runtimes(built: Callable[..., pathlib.Path]) -> Callable[[str], Runtime]:
    cache: dict[str, Runtime] = {}

    def get(variant: str) -> Runtime:
        if variant not in cache:
            cache[variant] = Runtime(built(variant))
        return cache[variant]

    return get


def reference(model: Any, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(last hidden state after the final norm [seq, hidden], logits [seq, vocab])."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[-1][0].numpy(), out.logits[0].numpy()


def greedy_reference(model: Any, ids: list[int], steps: int) -> list[int]:
    tokens = list(ids)
    for _ in range(steps):
        _, logits = reference(model, tokens)
        tokens.append(int(np.argmax(logits[-1])))
    return tokens[len(ids) :]


@pytest.mark.parametrize("variant", VARIANTS)
def test_get_last_hidden_matches_transformers(
    variant: str, runtimes: Callable[[str], Runtime], tiny_hf: Callable, hf_model: Callable
) -> None:
    rt = runtimes(variant)
    ids = rt.encode_chat(PROMPT)
    rt.reset()
    hidden = rt.get_last_hidden(rt.embed(ids))
    ref_hidden, _ = reference(hf_model(tiny_hf(variant)), ids)
    assert hidden.shape == (len(ids), rt.hidden_size)
    assert np.abs(hidden - ref_hidden).max() < F32_TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_decode_last_hidden_after_prefill(
    variant: str, runtimes: Callable[[str], Runtime], tiny_hf: Callable, hf_model: Callable
) -> None:
    rt = runtimes(variant)
    ids = rt.encode_chat(PROMPT)
    extra = [7, 300, 42]
    rt.reset()
    rt.prefill(rt.embed(ids))
    got = np.stack([rt.decode_last_hidden(rt.embed([t])) for t in extra])
    ref_hidden, _ = reference(hf_model(tiny_hf(variant)), ids + extra)
    assert np.abs(got - ref_hidden[len(ids) :]).max() < F32_TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match(
    variant: str, runtimes: Callable[[str], Runtime], tiny_hf: Callable, hf_model: Callable
) -> None:
    rt = runtimes(variant)
    ids = rt.encode_chat(PROMPT)
    rt.reset()
    prefill_logits = rt.prefill(rt.embed(ids))
    decode_logits = rt.decode(rt.embed([11]))
    _, ref_logits = reference(hf_model(tiny_hf(variant)), ids + [11])
    assert prefill_logits.shape == (rt.vocab_size,)
    assert np.abs(prefill_logits - ref_logits[len(ids) - 1]).max() < F32_TOL
    assert np.abs(decode_logits - ref_logits[len(ids)]).max() < F32_TOL


@pytest.mark.parametrize("variant", VARIANTS)
def test_sixteen_greedy_tokens_identical(
    variant: str, runtimes: Callable[[str], Runtime], tiny_hf: Callable, hf_model: Callable
) -> None:
    rt = runtimes(variant)
    ids = rt.encode_chat(PROMPT)
    result = rt.generate(prompt_ids=ids, max_new_tokens=16, greedy=True, stop_token_ids=[])
    assert result.output_ids == greedy_reference(hf_model(tiny_hf(variant)), ids, 16)


def test_get_last_hidden_fills_the_kv_cache_like_prefill(
    runtimes: Callable[[str], Runtime], tiny_hf: Callable, hf_model: Callable
) -> None:
    """After get_last_hidden over a prompt, decoding continues that prompt (DESIGN.md)."""
    rt = runtimes("qwen2-untied")
    ids = rt.encode_chat(PROMPT)
    rt.reset()
    rt.get_last_hidden(rt.embed(ids))
    assert rt.position == len(ids)
    logits = rt.decode(rt.embed([5]))
    _, ref_logits = reference(hf_model(tiny_hf("qwen2-untied")), ids + [5])
    assert np.abs(logits - ref_logits[-1]).max() < F32_TOL


# gemma3 rotates q/k itself at the cache's query positions, which chunking must keep right.
@pytest.mark.parametrize("variant", ["llama-tied-llama3", "gemma3-softcap-linear"])
def test_chunked_prefill_matches_single_pass(
    variant: str, built: Callable[..., pathlib.Path], tiny_hf: Callable, hf_model: Callable
) -> None:
    rt = Runtime(built(variant), prefill_chunk_size=4)
    ids = rt.encode_chat(PROMPT)
    assert len(ids) > 3 * 4  # several chunks
    hidden = rt.get_last_hidden(rt.embed(ids))
    rt.reset()
    logits = rt.prefill(rt.embed(ids))
    ref_hidden, ref_logits = reference(hf_model(tiny_hf(variant)), ids)
    assert np.abs(hidden - ref_hidden).max() < F32_TOL
    assert np.abs(logits - ref_logits[-1]).max() < F32_TOL


def test_runtime_keeps_the_sliding_window_limits(built: Callable[..., pathlib.Path]) -> None:
    """gemma3's window kernels need prefill chunks shorter than the window (16): a runtime
    override may not undo what the build chose."""
    with pytest.raises(ArtifactError, match="prefill_chunk_size 16 is above .* limit of 15"):
        Runtime(built("gemma3-softcap-linear"), prefill_chunk_size=16)
    Runtime(built("gemma3-softcap-linear"), context_window_size=64)  # any context is fine
