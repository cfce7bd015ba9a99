"""Closed-form links from raw arrays and from HF models, and stage 1 improving on them."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from mlcpatch.links.closed_form import AgentSamples, closed_form_links
from mlcpatch.links.files import load_links, save_links
from mlcpatch.links.torch_module import LinkSet
from mlcpatch.training.config import build_config, tiny_overrides
from mlcpatch.training.tiny import tiny_model
from mlcpatch.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Tiny matmuls: thread hand-offs cost more than they save on a 2-core machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def apply(link_set: LinkSet, name: str, rows: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return link_set[name](torch.from_numpy(rows.astype(np.float32))).numpy()


def linear_world(
    dim: int, rank: int | None, seed: int = 0
) -> tuple[AgentSamples, np.ndarray, np.ndarray]:
    """Hidden states whose next-token embeddings are exactly an affine map of them."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(600, dim)) * 3.0
    if rank is None:
        m = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    else:  # identity plus a low-rank part: what a narrow residual link can express exactly
        m = np.eye(dim) + rng.normal(size=(dim, rank)) @ rng.normal(size=(rank, dim)) / dim
    c = rng.normal(size=dim) * 0.1
    embedding = hidden @ m.T + c  # row i is the "embedding of the token after sample i"
    samples = AgentSamples("a", hidden, np.arange(len(hidden)), embedding)
    return samples, m, c


@pytest.mark.parametrize(("bottleneck", "rank"), [(32, None), (6, 6)])
def test_residual_inner_recovers_an_affine_map(bottleneck: int, rank: int | None) -> None:
    samples, m, c = linear_world(16, rank)
    link_set = LinkSet.from_file(
        closed_form_links([samples], handoffs=[], bottleneck=bottleneck, ridge=1e-8)
    )
    test = np.random.default_rng(1).normal(size=(50, 16)) * 3.0
    got = apply(link_set, "inner_a", test)
    np.testing.assert_allclose(got, test @ m.T + c, rtol=0, atol=2e-3 * np.abs(test @ m.T).max())


def test_narrow_residual_inner_truncates_in_the_data_metric() -> None:
    """Hidden states use 4 strong directions; a width-4 link must keep exactly those."""
    rng = np.random.default_rng(2)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    scales = np.array([10.0] * 4 + [0.01] * 12)
    hidden = (rng.normal(size=(800, 16)) * scales) @ basis.T
    targets = hidden @ (rng.normal(size=(16, 16)) / 4).T
    samples = AgentSamples("a", hidden, np.arange(800), targets)
    link_set = LinkSet.from_file(closed_form_links([samples], handoffs=[], bottleneck=4))
    assert cosine(apply(link_set, "inner_a", hidden), targets).mean() > 0.999


def ln_bound(targets: np.ndarray) -> float:
    """Best mean cosine an output LayerNorm allows: it removes each vector's mean."""
    return float(cosine(targets - targets.mean(-1, keepdims=True), targets).mean())


def test_ln_residual_inner_reaches_the_layer_norm_bound() -> None:
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(600, 16))
    # Like a real last hidden state: the output of a final norm, so every row has the same scale.
    hidden = 3.0 * (raw - raw.mean(-1, keepdims=True)) / raw.std(-1, keepdims=True)
    targets = hidden @ (rng.normal(size=(16, 16)) / 4).T + 0.1
    samples = AgentSamples("a", hidden, np.arange(600), targets)
    link_set = LinkSet.from_file(
        closed_form_links([samples], handoffs=[], variant="ln-residual", ridge=1e-8)
    )
    got = apply(link_set, "inner_a", hidden[:200])
    assert cosine(got, targets[:200]).mean() > ln_bound(targets[:200]) - 0.01


@pytest.mark.parametrize("variant", ["residual", "ln-residual"])
def test_outer_bridges_shared_vocabulary(variant: str) -> None:
    rng = np.random.default_rng(4)
    source_emb = rng.normal(size=(300, 12))
    bridge = rng.normal(size=(20, 12)) / 3
    # The receiver's vocabulary lists the same tokens in another order, plus some of its own.
    order = rng.permutation(300)
    target_emb = np.concatenate([(source_emb @ bridge.T)[order], rng.normal(size=(50, 20))])
    source_vocab = {f"t{i}": i for i in range(300)}
    target_vocab = {f"t{i}": int(np.where(order == i)[0][0]) for i in range(300)}
    target_vocab.update({f"own{i}": 300 + i for i in range(50)})
    source = AgentSamples(
        "s", rng.normal(size=(40, 12)), np.zeros(40, int), source_emb, source_vocab
    )
    target = AgentSamples(
        "t", rng.normal(size=(40, 20)), np.zeros(40, int), target_emb, target_vocab
    )
    link_set = LinkSet.from_file(
        closed_form_links([source, target], handoffs=[("s", "t")], variant=variant)
    )
    got = apply(link_set, "outer_s_to_t", source_emb[:100])
    wanted = source_emb[:100] @ bridge.T
    bound = 1.0 if variant == "residual" else ln_bound(wanted)
    assert cosine(got, wanted).mean() > bound - 0.01


def test_from_hf_models_and_saved(tmp_path: pathlib.Path) -> None:
    qwen, tokenizer = tiny_model("tiny:qwen2")
    llama, _ = tiny_model("tiny:llama")
    link_file = closed_form_links(
        [("planner", qwen, tokenizer), ("solver", llama, tokenizer)], bottleneck=64
    )
    assert [s.name for s in link_file.links] == [
        "inner_planner",
        "inner_solver",
        "outer_planner_to_solver",
    ]
    link_file.check_models({"planner": 32, "solver": 48})
    save_links(link_file, tmp_path / "links")
    assert load_links(tmp_path / "links").links == link_file.links


@pytest.mark.parametrize("variant", ["residual", "ln-residual"])
def test_inner_warm_up_beats_the_closed_form_start(tmp_path: pathlib.Path, variant: str) -> None:
    config = build_config(
        tiny_overrides(),
        {
            "variant": variant,
            "stage": "inner",
            "inner_steps": 80,
            "eval_every": 0,
            "save_every": 0,
            "out": str(tmp_path),
            "progress": False,
        },
    )
    result = Trainer(config, log=lambda _: None).run()
    start, end = result.evaluations[0], result.evaluations[-1]
    assert (start["step"], end["step"], end["split"]) == (0, 80, "validation")
    for agent in ("planner", "solver"):
        before, after = start[f"cosine_{agent}"], end[f"cosine_{agent}"]
        assert after > before + 0.005, (agent, before, after)
    assert np.mean(result.inner_losses[-10:]) < np.mean(result.inner_losses[:10])
