"""`mlcpatch eval`: scoring, intervals, resuming after a stop, and the command on real models."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import pytest
from click.testing import CliRunner

from mlcpatch.cli import main
from mlcpatch.eval.questions import Question, builtin_questions
from mlcpatch.eval.report import paired_difference, summarize, wilson
from mlcpatch.eval.runner import (
    RESULTS,
    EvalError,
    Mode,
    check_run,
    evaluate,
    read_results,
)
from mlcpatch.loop.orchestrator import AgentStep, RunResult


def _result(answer: str, tokens: int = 3, seconds: float = 0.5) -> RunResult:
    step = AgentStep(1, "solver", 10, 0, tokens, 10 + tokens, seconds, 0, text=answer)
    return RunResult("test", "p", "q", answer, seconds, [step])


def _oracle(questions: list[Question], right: bool) -> Callable[[list[str]], list[RunResult]]:
    gold = {q.prompt(): q for q in questions}

    def one(prompt: str) -> RunResult:
        q = gold[prompt]
        if q.choices:
            letter = q.answer if right else "ABCD"[("ABCD".index(q.answer) + 1) % 4]
            return _result(f"The answer is ({letter}).")
        number = int(q.answer) + (0 if right else 1)
        return _result(f"Let me think. So the total is {number:,}.")

    return lambda prompts: [one(p) for p in prompts]


@pytest.mark.parametrize("name", ["arithmetic", "choice", "gsm"])
def test_always_right_scores_100_and_always_wrong_scores_0(
    tmp_path: pathlib.Path, name: str
) -> None:
    questions = builtin_questions(name, "eval", 40)
    modes = [Mode("right", _oracle(questions, True)), Mode("wrong", _oracle(questions, False))]
    rows = evaluate(questions, modes, tmp_path)
    assert len(rows) == 80
    summary = {
        s["mode"]: s for s in summarize(read_results(tmp_path / RESULTS), ["right", "wrong"])
    }
    assert summary["right"]["accuracy"] == 1.0 and summary["right"]["correct"] == 40
    assert summary["wrong"]["accuracy"] == 0.0
    assert summary["right"]["ci95"][0] > 0.9 and summary["wrong"]["ci95"][1] < 0.1


def test_wilson_interval_and_paired_difference() -> None:
    # Textbook values of the Wilson score interval at 95%.
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    low, high = wilson(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson(0, 0) == (0.0, 0.0)
    mean, lo, hi = paired_difference([True, True, False, True], [False, True, False, False])
    assert mean == 0.5 and lo < 0.5 < hi
    assert paired_difference([True] * 5, [True] * 5) == (0.0, 0.0, 0.0)


def test_ratios_are_paired_over_shared_questions() -> None:
    rows = [
        {"id": "a", "mode": "text", "correct": False, "tokens_generated": 100,
         "positions_processed": 200, "seconds": 4.0},
        {"id": "b", "mode": "text", "correct": True, "tokens_generated": 100,
         "positions_processed": 200, "seconds": 4.0},
        {"id": "a", "mode": "latent", "correct": True, "tokens_generated": 20,
         "positions_processed": 90, "seconds": 1.0},
        {"id": "a", "mode": "single", "correct": False, "tokens_generated": 10,
         "positions_processed": 30, "seconds": 0.5},
    ]  # fmt: skip
    summary = {s["mode"]: s for s in summarize(rows, ["single", "text", "latent"])}
    latent = summary["latent"]
    assert latent["vs_text"]["questions"] == 1  # only question a has both
    assert latent["vs_text"]["speedup"] == 4.0
    assert latent["vs_text"]["token_reduction"] == pytest.approx(0.8)
    assert latent["vs_text"]["accuracy_difference"] == 1.0
    assert latent["vs_single"]["cost"] == 2.0
    assert summary["text"]["accuracy"] == 0.5 and summary["text"]["questions"] == 2


def test_a_stopped_run_resumes_where_it_stopped(tmp_path: pathlib.Path) -> None:
    questions = builtin_questions("arithmetic", "eval", 6)
    calls: list[str] = []
    right = _oracle(questions, True)

    def flaky(prompts: list[str]) -> list[RunResult]:
        calls.extend(prompts)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the user presses Ctrl-C in the middle of a run
        return right(prompts)

    modes = [Mode("a", flaky), Mode("b", right)]
    with pytest.raises(KeyboardInterrupt):
        evaluate(questions, modes, tmp_path)
    path = tmp_path / RESULTS
    kept = read_results(path)
    assert len(kept) == 6  # questions 1-3 in both modes; question 4 stopped in mode a
    # A line cut short by a hard kill is dropped, and the file is mended.
    with path.open("a") as handle:
        handle.write('{"id": "arith')
    assert len(read_results(path)) == len(kept)
    assert path.read_text().endswith("}\n")
    calls.clear()
    done = {(r["id"], r["mode"]) for r in kept}
    evaluate(questions, [Mode("a", right), Mode("b", right)], tmp_path, done=done)
    rows = read_results(path)
    pairs = [(r["id"], r["mode"]) for r in rows]
    assert len(pairs) == len(set(pairs)) == 12
    assert all(r["correct"] for r in rows)


def test_batches_go_through_every_mode_in_order_and_resume(tmp_path: pathlib.Path) -> None:
    questions = builtin_questions("arithmetic", "eval", 7)
    right = _oracle(questions, True)
    asked: list[tuple[str, int]] = []

    def sized(label: str, stop_at: int = 0) -> Callable[[list[str]], list[RunResult]]:
        def solve(prompts: list[str]) -> list[RunResult]:
            asked.append((label, len(prompts)))
            if len(asked) == stop_at:
                raise KeyboardInterrupt
            return right(prompts)

        return solve

    with pytest.raises(KeyboardInterrupt):
        evaluate(questions, [Mode("a", sized("a")), Mode("b", sized("b", 4))], tmp_path, batch=3)
    assert asked == [("a", 3), ("b", 3), ("a", 3), ("b", 3)]
    kept = read_results(tmp_path / RESULTS)
    assert [(r["id"], r["mode"]) for r in kept] == [
        (q.id, m) for m in ("a", "b") for q in questions[:3]
    ] + [(q.id, "a") for q in questions[3:6]]
    asked.clear()
    done = {(r["id"], r["mode"]) for r in kept}
    modes = [Mode("a", sized("a")), Mode("b", sized("b"))]
    evaluate(questions, modes, tmp_path, done=done, batch=3)
    assert asked == [("b", 3), ("a", 1), ("b", 1)]  # only what was missing
    assert len(read_results(tmp_path / RESULTS)) == 14
    with pytest.raises(EvalError, match="at least 1"):
        evaluate(questions, modes, tmp_path, batch=0)


def test_a_folder_holding_another_run_is_refused(tmp_path: pathlib.Path) -> None:
    identity = {"models": ["m"], "size": 3}
    info = check_run(tmp_path, identity, {"text": "", "latent:x": "abc"}, overwrite=False)
    (tmp_path / "run.json").write_text(json.dumps(info))
    # More modes on the same questions and settings: fine.
    more = check_run(tmp_path, identity, {"single": "", "latent:y": "def"}, overwrite=False)
    assert set(more["modes"]) == {"text", "latent:x", "single", "latent:y"}
    with pytest.raises(EvalError, match="other settings \\(size\\)"):
        check_run(tmp_path, {"models": ["m"], "size": 4}, {}, overwrite=False)
    with pytest.raises(EvalError, match="mode latent:x was run with another link file"):
        check_run(tmp_path, identity, {"latent:x": "changed"}, overwrite=False)
    (tmp_path / RESULTS).write_text('{"id": 1}\n')
    fresh = check_run(tmp_path, {"size": 4}, {}, overwrite=True)
    assert fresh["identity"] == {"size": 4} and not (tmp_path / RESULTS).exists()


def test_eval_command_on_tiny_models(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    model = built("qwen2-untied")
    questions = tmp_path / "qs.jsonl"
    questions.write_text(
        '{"question": "What is 2 + 3?", "answer": "5"}\n'
        '{"question": "Which is larger?", "choices": ["2", "9"], "answer": "B"}\n'
        '{"question": "Say yes.", "answer": "yes"}\n'
    )
    runner = CliRunner()
    links = tmp_path / "cf"
    saved = runner.invoke(
        main, ["run", "--model", str(model), "--save-links", str(links), "--mode", "latent", "Hi"]
    )
    assert saved.exit_code == 0, saved.output
    out = tmp_path / "eval"
    args = [
        "eval", "--model", str(model), "--questions", str(questions), "--rounds", "1",
        "--latent-steps", "2", "--max-new-tokens", "4", "--text-tokens", "3",
        "--links", str(links), "--out", str(out), "--no-progress",
    ]  # fmt: skip
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    for mode in ("single", "text", "latent", "latent:cf"):
        assert mode in first.output
    rows = read_results(out / RESULTS)
    assert sorted({r["mode"] for r in rows}) == ["latent", "latent:cf", "single", "text"]
    assert len(rows) == 12
    # The saved file holds the very links the closed-form mode fitted: same answers.
    by = {(r["id"], r["mode"]): r["answer"] for r in rows}
    assert all(by[(i, "latent")] == by[(i, "latent:cf")] for i in ("qs-1", "qs-2", "qs-3"))
    summary = json.loads((out / "summary.json").read_text())
    assert [m["questions"] for m in summary["modes"]] == [3, 3, 3, 3]
    assert {s["what"] for s in summary["setup"]} >= {"open models", "fit closed-form links"}
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = runner.invoke(main, [*args, "--json"])
    assert again.exit_code == 0, again.output
    assert len(read_results(out / RESULTS)) == 12  # nothing asked twice
    report = json.loads(again.output[again.output.index("{") :])
    assert report["size"] == 3
    other = runner.invoke(main, [*args[:-5], "--rounds", "2", "--out", str(out)])
    assert other.exit_code != 0 and "other settings (settings)" in other.output
    # Three questions at once: the answers and counts of one at a time; the agents' shared
    # instructions run once, in the first question (the others fork them: fewer positions).
    batched_out = tmp_path / "batched"
    batched = runner.invoke(main, [*args[:-2], str(batched_out), "--no-progress", "--batch", "3"])
    assert batched.exit_code == 0, batched.output
    assert "answers/s" in batched.output and "with --batch 3" in batched.output
    keys = ("answer", "tokens_generated", "correct")

    def table(folder: pathlib.Path, key: str | None = None) -> dict:
        rows = read_results(folder / RESULTS)
        return {(r["id"], r["mode"]): [r[k] for k in ((key,) if key else keys)] for r in rows}

    assert table(batched_out) == table(out)
    alone, together = (table(f, "positions_processed") for f in (out, batched_out))
    for (qid, mode), positions in together.items():
        if qid == "qs-1" or mode == "single":  # runs the shared prefix; single: no loop
            assert positions == alone[(qid, mode)]
        else:
            assert positions < alone[(qid, mode)]
