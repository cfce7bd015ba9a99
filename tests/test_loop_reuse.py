"""Prefix reuse and batched questions give what the plain loop gives, on tiny models of every arch.

The plain path is the loop with `share_prefix=False`, one question at a time: every turn starts
an empty sequence and runs the whole prompt. Against it, on the real compiled runtime:
- sharing keeps each agent's prompt before the `{latent}` slot between rounds: same answers and
  texts, the same hidden states on every position both ran (1e-5), fewer positions from round 2;
- `run_batch` runs several questions in lockstep (ragged prefill, batched decode): each one's
  answer, tokens and hidden states are those of its run alone; with sharing, the agents'
  instructions the questions have in common run once and are forked into every sequence.
Hidden states and logits are checked call by call by `Checked` (below).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mlcpatch.loop.backends import TorchBackend
from mlcpatch.loop.calibrate import fitted_links
from mlcpatch.loop.orchestrator import Agent, RunResult, Settings, run, run_batch
from mlcpatch.loop.patterns import load_pattern
from mlcpatch.runtime import Runtime

ARCH_VARIANTS = [
    "qwen2-untied",
    "llama-tied-llama3",
    "qwen3-tied",
    "mistral-untied",
    "gemma3-softcap-linear",  # sliding-window layers, prompts longer than the window
]
QUESTIONS = ["What is 3 + 4 * 2?", "Name a prime above 20.", "Is 91 prime? Say why."]
SETTINGS = dict(rounds=3, latent_steps=3, max_new_tokens=6, text_tokens=5)
ATOL = 1e-5  # hidden states (the bound)
# A batch runs the CPU library's batched kernels (one GEMM over the sequences) where a single
# sequence runs its GEMV: the same f32 products summed in another order. Hidden states stay
# within 1e-5; logits, one more matmul over the vocabulary, differed by up to 1.2e-5.
LOGITS_ATOL = 3e-5


def _atol(verb: str) -> float:
    return ATOL if "hidden" in verb else LOGITS_ATOL


class Checked:
    """The backend under test, every call held to the plain path on a reference backend.

    It follows what each sequence holds. Each prompt (`get_last_hidden_batch`,
    `prefill_batch`) is run again on the reference as the plain loop runs it: a fresh sequence,
    the whole content at once, one sequence at a time; each step (`decode_*_batch`) continues
    that reference sequence with the same input. Outputs must agree within ATOL (logits:
    LOGITS_ATOL): the numerics of reuse and batching, free of the latent loop's own
    amplification of tiny differences."""

    def __init__(self, backend: Any, reference: Any) -> None:
        self._backend, self._ref = backend, reference
        self.content: dict[int, list[np.ndarray]] = {}
        self.checked = 0
        self.forked = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def open_sequences(self, count: int) -> None:
        self._backend.open_sequences(count)
        self._ref.open_sequences(count)
        self.content = {seq: [] for seq in range(count)}

    def truncate(self, seq: int, length: int) -> int:
        kept = self._backend.truncate(seq, length)
        self.content[seq] = self.content[seq][:kept]
        return kept

    def fork(self, parent: int, child: int, length: int) -> int:
        kept = self._backend.fork(parent, child, length)
        self.content[child] = self.content[parent][:kept]
        self.forked += kept > 0
        return kept

    def _prompts(self, verb: str, seqs: list[int], embeds: list[np.ndarray]) -> list[np.ndarray]:
        out = getattr(self._backend, f"{verb}_batch")(seqs, embeds)
        for seq, given, got in zip(seqs, embeds, out, strict=True):
            held = len(self.content[seq])
            self.content[seq] += list(given)
            self._ref.truncate(seq, 0)
            self._ref.select(seq)
            want = getattr(self._ref, verb)(np.stack(self.content[seq]))
            np.testing.assert_allclose(
                got, want[held:] if verb != "prefill" else want, atol=_atol(verb)
            )
            self.checked += 1
        return out

    def _steps(self, verb: str, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        out = getattr(self._backend, f"{verb}_batch")(seqs, embeds)
        for seq, given, got in zip(seqs, embeds, out, strict=True):
            self.content[seq].append(given)
            self._ref.select(seq)
            np.testing.assert_allclose(got, getattr(self._ref, verb)(given), atol=_atol(verb))
            self.checked += 1
        return out

    def get_last_hidden_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> list[np.ndarray]:
        return self._prompts("get_last_hidden", seqs, embeds)

    def prefill_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self._prompts("prefill", seqs, embeds))

    def decode_last_hidden_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        return self._steps("decode_last_hidden", seqs, embeds)

    def decode_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        return self._steps("decode", seqs, embeds)


@pytest.fixture(scope="module")
def checked(built: Callable[..., pathlib.Path]) -> dict[str, Checked]:
    """variant -> its runtime, checked against a second runtime of the same artifact."""
    return {v: Checked(Runtime(built(v)), Runtime(built(v), verify=False)) for v in ARCH_VARIANTS}


def _system(backend: Any) -> tuple:
    pattern = load_pattern("sequential")
    return pattern, [Agent(role, backend) for role in pattern.agents]


def _same_run(a: RunResult, b: RunResult) -> None:
    assert a.answer == b.answer
    assert [s.text for s in a.steps] == [s.text for s in b.steps]
    assert [s.tokens_generated for s in a.steps] == [s.tokens_generated for s in b.steps]
    assert [s.input_positions for s in a.steps] == [s.input_positions for s in b.steps]


@pytest.mark.parametrize("variant", ARCH_VARIANTS)
def test_shared_prefix_matches_the_plain_loop(checked: dict[str, Checked], variant: str) -> None:
    backend = checked[variant]
    pattern, agents = _system(backend)
    links = fitted_links(pattern, agents)
    for mode in ("latent", "text"):
        plain_settings = Settings(**SETTINGS, share_prefix=False)
        plain = run(mode, pattern, agents, QUESTIONS[0], plain_settings, links)
        backend.checked = 0
        shared = run(mode, pattern, agents, QUESTIONS[0], Settings(**SETTINGS), links)
        assert backend.checked > 0
        _same_run(plain, shared)
        for p, s in zip(plain.steps, shared.steps, strict=True):
            assert p.positions_reused == 0
            if s.round == 1:
                assert s.positions_reused == 0 and s.positions_processed == p.positions_processed
            else:  # the prompt before the slot is not run again
                assert s.positions_reused > 0
                assert s.positions_processed == p.positions_processed - s.positions_reused
        assert shared.total("positions_processed") < plain.total("positions_processed")


@pytest.mark.parametrize("variant", ARCH_VARIANTS)
def test_batched_questions_match_one_at_a_time(checked: dict[str, Checked], variant: str) -> None:
    backend = checked[variant]
    pattern, agents = _system(backend)
    links = fitted_links(pattern, agents)
    settings = Settings(**SETTINGS)
    for mode in ("latent", "text"):
        alone = [run(mode, pattern, agents, q, settings, links) for q in QUESTIONS]
        backend.checked = backend.forked = 0
        together = run_batch(mode, pattern, agents, QUESTIONS, settings, links)
        assert backend.checked > 0
        # every agent's first turn: forked into the second and third questions' sequences
        # (models whose window layers use the cache's window kernels do not fork)
        assert backend.forked == (2 * len(agents) if backend.can_fork else 0)
        assert [r.question for r in together] == QUESTIONS
        for q, (one, batched) in enumerate(zip(alone, together, strict=True)):
            _same_run(one, batched)
            for a, b in zip(one.steps, batched.steps, strict=True):
                if q == 0 or b.round > 1 or not backend.can_fork:  # the first runs the prefix
                    assert (b.positions_processed, b.positions_reused) == (
                        a.positions_processed,
                        a.positions_reused,
                    )
                else:  # the others start from it
                    assert b.positions_reused > 0 and a.positions_reused == 0
                    assert b.positions_processed == a.positions_processed - b.positions_reused
        if variant != ARCH_VARIANTS[0]:
            continue  # without sharing, positions too (one arch: the suite's time)
        unshared = run_batch(
            mode, pattern, agents, QUESTIONS, Settings(**SETTINGS, share_prefix=False), links
        )
        for one, batched in zip(
            [run(mode, pattern, agents, q, Settings(**SETTINGS, share_prefix=False), links)
             for q in QUESTIONS],
            unshared,
            strict=True,
        ):  # fmt: skip
            _same_run(one, batched)
            assert [s.positions_processed for s in one.steps] == [
                s.positions_processed for s in batched.steps
            ]


def test_window_kernel_models_do_not_fork(built: Callable[..., pathlib.Path]) -> None:
    rt = Runtime(built("gemma3-softcap-linear"), verify=False)
    assert not rt.can_fork
    rt.open_sequences(2)
    rt.get_last_hidden(rt.embed([3, 4, 5]))
    assert rt.fork(0, 1, 2) == 0 and rt.length(1) == 0


@pytest.mark.parametrize("variant", ["qwen2-untied", "gemma3-softcap-linear"])
def test_runtime_truncate_and_batch_verbs(built: Callable[..., pathlib.Path], variant: str) -> None:
    """The verbs under the loop: popping back to a prefix, and ragged batches split over several
    forwards (a prefill chunk of 8 positions), against fresh single-sequence runs."""
    rt = Runtime(built(variant), prefill_chunk_size=8, verify=False)
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(1, rt.vocab_size, n)] for n in (21, 3, 12)]
    fresh_hidden, fresh_logits, fresh_next = [], [], []
    for ids in prompts:
        rt.reset()
        fresh_hidden.append(rt.get_last_hidden(rt.embed(ids)))
        rt.reset()
        fresh_logits.append(rt.prefill(rt.embed(ids)))
        fresh_next.append(rt.decode(rt.embed([5])))
    rt.open_sequences(3)
    order = [2, 0, 1]  # sequence s holds prompt order[s]
    hidden = rt.get_last_hidden_batch(order, [rt.embed(prompts[s]) for s in range(3)])
    for s, h in enumerate(hidden):
        np.testing.assert_allclose(h, fresh_hidden[s], atol=ATOL, rtol=0)
    # Pop each back to a prefix and run the rest again: the same hidden states.
    for s in range(3):
        keep = len(prompts[s]) // 2
        assert rt.truncate(order[s], keep) == keep
    rest = [rt.embed(prompts[s][len(prompts[s]) // 2 :]) for s in range(3)]
    again = rt.get_last_hidden_batch(order, rest)
    for s, h in enumerate(again):
        np.testing.assert_allclose(h, fresh_hidden[s][len(prompts[s]) // 2 :], atol=ATOL, rtol=0)
    for s in range(3):
        rt.truncate(order[s], 0)
    assert [rt.length(s) for s in range(3)] == [0, 0, 0]
    logits = rt.prefill_batch(order, [rt.embed(p) for p in prompts])
    next_logits = rt.decode_batch(order, rt.embed([5, 5, 5]))
    for s in range(3):
        np.testing.assert_allclose(logits[s], fresh_logits[s], atol=LOGITS_ATOL, rtol=0)
        np.testing.assert_allclose(next_logits[s], fresh_next[s], atol=LOGITS_ATOL, rtol=0)
    with pytest.raises(ValueError, match="cannot fork"):
        rt.fork(0, 0, 0)
    with pytest.raises(ValueError, match="cannot keep"):
        rt.truncate(0, rt.length(0) + 1)
    with pytest.raises(ValueError, match="no sequence 3"):
        rt.select(3)
    if not rt.can_fork:
        return  # test_window_kernel_models_do_not_fork
    # Fork a prefix of one sequence into another and continue both: as if each ran alone.
    prefix = 13  # a partly used page of 16 positions: the fork copies it
    rt.open_sequences(2)
    rt.get_last_hidden_batch([0], [rt.embed(prompts[0][:prefix])])
    assert rt.fork(0, 1, prefix) == prefix and rt.length(1) == prefix
    tails = [rt.embed(prompts[0][prefix:]), rt.embed([7, 8, 9])]
    both = rt.get_last_hidden_batch([0, 1], tails)
    np.testing.assert_allclose(both[0], fresh_hidden[0][prefix:], atol=ATOL, rtol=0)
    rt.reset()
    alone = rt.get_last_hidden(rt.embed(prompts[0][:prefix] + [7, 8, 9]))
    np.testing.assert_allclose(both[1], alone[prefix:], atol=ATOL, rtol=0)


def test_torch_backend_reuses_and_batches_alike(
    checked: dict[str, Checked], tiny_hf: Callable[[str], pathlib.Path]
) -> None:
    """TorchBackend crops its caches and runs batches one sequence at a time: the same runs."""
    from transformers import AutoModelForCausalLM

    variant = "gemma3-softcap-linear"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf(variant)), dtype="float32")
    tokenizer = checked[variant].tokenizer
    torch_backend = Checked(
        TorchBackend(model, tokenizer, device="cpu"), TorchBackend(model, tokenizer, device="cpu")
    )
    pattern, agents = _system(torch_backend)
    links = fitted_links(pattern, agents)
    plain = Settings(**SETTINGS, share_prefix=False)
    for mode in ("latent", "text"):
        alone = [run(mode, pattern, agents, q, plain, links) for q in QUESTIONS[:2]]
        shared = run_batch(mode, pattern, agents, QUESTIONS[:2], Settings(**SETTINGS), links)
        for one, other in zip(alone, shared, strict=True):
            _same_run(one, other)
            assert any(s.positions_reused for s in other.steps)  # the crop kept the prefix
