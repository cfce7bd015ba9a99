"""Stage 2 on two heterogeneous tiny models: the loss falls, only links learn, resume is exact."""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mlcpatch.cli import main
from mlcpatch.links.files import load_links
from mlcpatch.links.torch_module import LinkSet
from mlcpatch.training.checkpoint import checkpoint_path
from mlcpatch.training.config import build_config, tiny_overrides
from mlcpatch.training.tiny import write_tiny_model
from mlcpatch.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_config(out: pathlib.Path, **overrides: Any) -> Any:
    values = {"out": str(out), "progress": False, "eval_every": 0, "save_every": 0}
    values.update(overrides)
    return build_config(tiny_overrides(), values)


def base_state(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.base_params]


def test_loss_falls_and_backbones_stay_bit_identical(tmp_path: pathlib.Path) -> None:
    config = tiny_config(
        tmp_path, stage="outer", steps=200, batch_size=4, rounds=2, latent_steps=2, lr=3e-3
    )
    trainer = Trainer(config, log=lambda _: None)
    assert {a.backbone.hidden_size for a in trainer.agents.values()} == {32, 48}
    before = base_state(trainer)
    result = trainer.run()
    first, last = np.mean(result.outer_losses[:20]), np.mean(result.outer_losses[-20:])
    assert last < first - 1.0, (first, last)
    after = base_state(trainer)
    assert len(before) == len(after) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(not p.requires_grad and p.grad is None for p in trainer.base_params)
    # The exported links are the trained ones and fit the models they were trained with.
    link_file = load_links(tmp_path)
    link_file.check_models({"planner": 32, "solver": 48})
    assert {s.name for s in link_file.links} == {
        "inner_planner",
        "inner_solver",
        "outer_planner_to_solver",
        "outer_solver_to_planner",
    }


@pytest.mark.parametrize("train_inner", [False, True])
def test_gradients_reach_only_link_parameters(tmp_path: pathlib.Path, train_inner: bool) -> None:
    config = tiny_config(tmp_path, train_inner_in_outer=train_inner, latent_steps=2, rounds=2)
    trainer = Trainer(config, log=lambda _: None)
    module = trainer._build_module(None)
    trainer._trainable(module, "outer")
    batch = trainer.train_set[:4]
    loss = module("outer", [e.question for e in batch], [e.answer for e in batch])
    loss.backward()
    norms: dict[str, float] = {}
    for name, param in module.named_parameters():
        link = name.split(".")[2]  # links.links.<link>.<param>
        expected = module.links.specs[link].kind == "outer" or train_inner
        assert (param.grad is not None) == expected, name
        if expected:
            norms[link] = norms.get(link, 0.0) + float(param.grad.norm())
    # W1 alone may see zero gradient at first (W2 starts at zero for outer links), the link not.
    assert norms and all(value > 0 for value in norms.values()), norms
    assert all(p.grad is None for p in trainer.base_params)
    registered = {id(p) for p in module.parameters()}
    assert registered == {id(p) for p in module.links.parameters()}  # backbones hang outside


def test_gradient_checkpointing_changes_nothing_but_memory(tmp_path: pathlib.Path) -> None:
    grads = []
    for flag in (False, True):
        config = tiny_config(tmp_path, grad_checkpointing=flag, init="random")
        trainer = Trainer(config, log=lambda _: None)
        module = trainer._build_module(None)
        trainer._trainable(module, "outer")
        batch = trainer.train_set[:3]
        loss = module("outer", [e.question for e in batch], [e.answer for e in batch])
        loss.backward()
        grads.append(
            (
                loss.detach(),
                [p.grad.clone() for p in module.links.parameters() if p.grad is not None],
            )
        )
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(a, b)


def test_resume_continues_exactly(tmp_path: pathlib.Path) -> None:
    settings = {"inner_steps": 4, "steps": 6, "save_every": 3, "eval_every": 3, "batch_size": 4}
    saved = tmp_path / "mid-outer.pt"

    def keep_mid_stage_checkpoint(message: str) -> None:
        # The last evaluation runs after step 6 and before the stage-end save, so the file on
        # disk is still the step-3 checkpoint: exactly what an interrupted run leaves behind.
        if "accuracy" in message and "step=6" in message:
            shutil.copy(checkpoint_path(tmp_path / "a"), saved)

    Trainer(tiny_config(tmp_path / "a", **settings), log=keep_mid_stage_checkpoint).run()
    straight = LinkSet.from_file(load_links(tmp_path / "a")).state_dict()

    checkpoint_path(tmp_path / "b").parent.mkdir(parents=True)
    shutil.copy(saved, checkpoint_path(tmp_path / "b"))
    messages: list[str] = []
    resumed_config = tiny_config(tmp_path / "b", resume=True, **settings)
    result = Trainer(resumed_config, log=messages.append).run()
    assert any("resuming: completed ['inner'], outer at step 3" in m for m in messages)
    assert len(result.outer_losses) == 3 and not result.inner_losses
    resumed = LinkSet.from_file(load_links(tmp_path / "b")).state_dict()
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_refuses_a_different_system(tmp_path: pathlib.Path) -> None:
    Trainer(tiny_config(tmp_path, inner_steps=1, steps=1, save_every=1), log=lambda _: None).run()
    result = CliRunner().invoke(
        main, ["train", "--tiny", "--out", str(tmp_path), "--resume", "--rounds", "3"]
    )
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --resume: 'rounds' was 2 in the checkpoint, now 3"


def test_cli_trains_from_model_folders_and_writes_both_formats(tmp_path: pathlib.Path) -> None:
    folder = write_tiny_model("tiny:qwen2", tmp_path / "qwen")
    result = CliRunner().invoke(
        main,
        [
            "train", "--model", str(folder), "--model", "tiny:llama",
            "--rounds", "1", "--latent-steps", "2", "--bottleneck", "32",
            "--inner-steps", "3", "--steps", "4", "--eval-every", "0",
            "--out", str(tmp_path / "out"), "--no-progress",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "eval step=4 split=validation accuracy=" in result.output
    binary = load_links(tmp_path / "out")
    legacy = load_links(tmp_path / "out" / "recursivelink.json")
    assert binary.links == legacy.links
    assert binary.agents[0].model == str(folder)
    for key, value in binary.tensors.items():
        assert np.array_equal(value, legacy.tensors[key])
    log = [
        json.loads(line) for line in (tmp_path / "out" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [e["step"] for e in log if e.get("stage") == "outer"] == [1, 2, 3, 4]


def test_cli_errors_are_one_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"}\n')
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--tiny", "--data", str(bad), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: {bad}:2: missing field 'answer'"
    result = runner.invoke(main, ["train", "--tiny", "--resume", "--out", str(tmp_path / "x")])
    assert result.output.strip().startswith("Error: --resume: no checkpoint at ")
    result = runner.invoke(main, ["train", "--model", str(tmp_path / "nowhere"), "--model", "m"])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: cannot load model '{tmp_path / 'nowhere'}'")
    assert len(result.output.strip().splitlines()) == 1


def test_snapshots_hold_the_links_of_each_validation_and_the_log_times_them(
    tmp_path: pathlib.Path,
) -> None:
    config = tiny_config(
        tmp_path, stage="outer", steps=4, eval_every=2, batch_size=4, snapshots=True, lr=3e-3
    )
    result = Trainer(config, log=lambda _: None).run()
    folders = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert folders == ["step-00000", "step-00002", "step-00004"]
    start = LinkSet.from_file(load_links(tmp_path / "snapshots" / "step-00000")).state_dict()
    last = LinkSet.from_file(load_links(tmp_path / "snapshots" / "step-00004")).state_dict()
    # Step 0 is the closed-form start; training moved the outer links away from it by step 4.
    assert any(not torch.equal(start[k], last[k]) for k in start)
    # The exported links are the kept-best ones, so they equal one of the snapshots.
    exported = LinkSet.from_file(load_links(tmp_path)).state_dict()
    snapshots = [
        LinkSet.from_file(load_links(tmp_path / "snapshots" / name)).state_dict()
        for name in folders
    ]
    assert any(all(torch.equal(s[k], exported[k]) for k in exported) for s in snapshots)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    elapsed = [entry["elapsed"] for entry in log]
    assert elapsed == sorted(elapsed) and elapsed[-1] > 0
    assert [e["snapshot"] for e in log if "snapshot" in e] == [f"snapshots/{n}" for n in folders]
    assert len(result.evaluations) == 3


def test_no_snapshots_unless_asked(tmp_path: pathlib.Path) -> None:
    Trainer(tiny_config(tmp_path, stage="outer", steps=2, eval_every=1), log=lambda _: None).run()
    assert not (tmp_path / "snapshots").exists()
