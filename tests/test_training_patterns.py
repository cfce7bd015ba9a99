"""The trainer runs the loop's own patterns: every built-in pattern trains (Mixture's fan-in
included), and the file it writes loads unchanged into `mlcpatch run` with the same pattern."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlcpatch.cli import main
from mlcpatch.links.files import load_links
from mlcpatch.loop.patterns import builtin_patterns, load_pattern
from mlcpatch.loop.prompts import MARKER, render
from mlcpatch.loop.tools import run_tools
from mlcpatch.training.config import build_config
from mlcpatch.training.prompts import tokenize_parts
from mlcpatch.training.trainer import Trainer, scale_lr

QUESTIONS = [
    {"question": "What is 2 + 3?", "answer": "5"},
    {"question": "What is 7 - 4?", "answer": "3"},
    {"question": "What is 6 + 1?", "answer": "7"},
    {"question": "What is 9 - 5?", "answer": "4"},
]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _config(model: pathlib.Path, pattern: str, out: pathlib.Path, **extra: Any) -> Any:
    data = out.parent / f"{out.name}-data.jsonl"
    data.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    values = {
        "models": [str(model)],
        "loop_pattern": pattern,
        "data": str(data),
        "validation_fraction": 0.0,
        "rounds": 2,
        "latent_steps": 2,
        "bottleneck": 32,
        "stage": "outer",
        "steps": 30,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup_steps": 0,
        "eval_every": 0,
        "save_every": 0,
        "eval_examples": 4,
        "max_new_tokens": 4,
        "progress": False,
        "out": str(out),
    }
    values.update(extra)
    return build_config(values)


@pytest.mark.parametrize("pattern", builtin_patterns())
def test_every_pattern_trains_and_loads_into_run(
    pattern: str,
    tiny_hf: Callable[[str], pathlib.Path],
    built: Callable[..., pathlib.Path],
    tmp_path: pathlib.Path,
) -> None:
    model = tiny_hf("qwen2-untied")
    out = tmp_path / "links"
    trainer = Trainer(_config(model, pattern, out), log=lambda _: None)
    loop = load_pattern(pattern)
    assert [a.role for a in trainer.agents.values()] == list(loop.agents)
    result = trainer.run()
    losses = result.outer_losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    link_file = load_links(out)
    pairs = {(s.source, s.target) for s in link_file.links if s.kind == "outer"}
    assert pairs == set(loop.handoffs())
    assert {s.source for s in link_file.links if s.kind == "inner"} == {a.name for a in loop.agents}
    # The same file, no renaming, runs in the loop over the compiled build of the same model.
    run = CliRunner().invoke(
        main,
        [
            "run", "--model", str(built("qwen2-untied")), "--pattern", pattern, "--links",
            str(out), "--rounds", "2", "--latent-steps", "2", "--max-new-tokens", "4",
            "--mode", "latent", "--json", "What is 2 + 3?",
        ],
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["latent_steps"] == 2 * (2 * len(loop.agents) - 1)


def test_mixture_fan_in_concatenates_every_expert(
    tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    trainer = Trainer(
        _config(tiny_hf("qwen2-untied"), "mixture", tmp_path / "m", steps=1), log=lambda _: None
    )
    module = trainer._build_module(None)
    handed = module.handover_to_final(["What is 2 + 3?", "What is 7 - 4?"])
    # The summarizer receives three experts x m = 2 latent vectors each, in `receives` order.
    assert handed is not None and tuple(handed.shape) == (2, 3 * 2, 64)


def test_training_prompts_are_the_loops_prompts(tiny_hf: Callable[[str], pathlib.Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_hf("qwen2-untied")))
    role = load_pattern("deliberation").agent("tool_caller")
    question = "What is 12 * 3?"
    parts = tokenize_parts(tokenizer, role, question)
    tools = "\n".join(run_tools(role.tools, question))
    prompt = render(tokenizer, role, question, tools)
    before, _, after = prompt.partition(MARKER)
    assert tokenizer.decode(parts.prefix) == before
    assert tokenizer.decode(parts.suffix) == after
    assert "12 * 3 = 36" in before  # the tool caller's calculator result is in its prompt


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_never_ends_worse_than_the_best_it_saw(
    tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path, keep_best: bool
) -> None:
    messages: list[str] = []
    config = _config(tiny_hf("qwen2-untied"), "distillation", tmp_path, keep_best=keep_best)
    trainer = Trainer(config, messages.append)
    module = trainer._build_module(None)
    start = {k: v.clone() for k, v in module.links.state_dict().items()}
    trainer._remember_if_best(module, "outer", {"step": 0, "accuracy": 0.5, "loss": 2.0})
    with torch.no_grad():
        for param in module.links.parameters():
            param.add_(1.0)  # what a diverging step does
    moved = {k: v.clone() for k, v in module.links.state_dict().items()}
    # Lower loss but lower accuracy: accuracy decides, loss only breaks ties.
    last = {"step": 7, "accuracy": 0.25, "loss": 1.0}
    trainer._remember_if_best(module, "outer", last)
    trainer._restore_best(module, "outer", last)
    now = module.links.state_dict()
    expected = start if keep_best else moved
    assert all(torch.equal(now[k], expected[k]) for k in start)
    assert any("outer links: kept the start" in m for m in messages) == keep_best
    assert trainer.score({"cosine_a": 0.9, "cosine_b": 0.7, "step": 3}, "inner") == (
        pytest.approx(0.8),
    )


def test_learning_rates_shrink_with_the_hidden_size(
    tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path
) -> None:
    trainer = Trainer(_config(tiny_hf("qwen2-untied"), "distillation", tmp_path / "lr"))
    assert trainer.scaled_lr("outer") == pytest.approx(1e-3)  # hidden 64 is the reference
    assert scale_lr(9e-4, 576) == pytest.approx(3e-4)  # SmolLM2-135M: a third
    assert scale_lr(1e-3, 32) == 1e-3  # narrower models keep the configured rate


def test_the_demo_links_fit_the_sequential_pattern_and_smollm2() -> None:
    """The shipped links (`make demo`) name the loop's agents and SmolLM2-135M's width."""
    folder = pathlib.Path(__file__).parents[1] / "training" / "links" / "smollm2-135m-sequential"
    link_file = load_links(folder)
    loop = load_pattern("sequential")
    link_file.check_models({a.name: 576 for a in loop.agents}, str(folder))
    outer = {(s.source, s.target) for s in link_file.links if s.kind == "outer"}
    assert outer == set(loop.handoffs())
    config = json.loads((folder / "train_config.json").read_text())
    assert (config["loop_pattern"], config["models"]) == ("sequential", ["pypi:smollm2-135m"])
    assert config["data"] == "arithmetic"  # its train split: the results table uses eval
