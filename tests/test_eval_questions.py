"""Question sets: checked answers, splits that never share a question, JSONL files, and a
calibration text that shares nothing with any of them."""

from __future__ import annotations

import json
import pathlib
import re

import pytest

from mlcpatch.eval.questions import (
    BUILTIN_SETS,
    QuestionSetError,
    builtin_questions,
    load_questions,
    read_jsonl,
)
from mlcpatch.loop.calibrate import calibration_text


def _chain_value(text: str) -> int:
    """Our own reading of '... 12 - 3 + 40 =' or 'value of 12 - 3 + 40?'."""
    expression = re.search(r"(-?\d+(?:\s*[-+]\s*\d+)+)\s*(?:=|\?)", text)
    assert expression, text
    tokens = expression.group(1).split()
    total = int(tokens[0])
    for op, number in zip(tokens[1::2], tokens[2::2], strict=True):
        total = total + int(number) if op == "+" else total - int(number)
    return total


@pytest.mark.parametrize("name", sorted(BUILTIN_SETS))
def test_splits_never_share_a_question_and_are_reproducible(name: str) -> None:
    evaluation = builtin_questions(name, "eval", 150, seed=0)
    train = builtin_questions(name, "train", 450, seed=0)
    other_seed = builtin_questions(name, "train", 150, seed=1)
    assert len(evaluation) == 150 and len(train) == 450
    eval_text = {" ".join(q.question.split()) for q in evaluation}
    assert len(eval_text) == 150  # no repeats inside a split
    for questions in (train, other_seed):
        assert not eval_text & {" ".join(q.question.split()) for q in questions}
    assert builtin_questions(name, "eval", 150, seed=0) == evaluation
    assert [q.id for q in other_seed] != [q.id for q in train[:150]]
    assert len({q.id for q in evaluation + train}) == 600


def test_arithmetic_answers_are_right() -> None:
    for question in builtin_questions("arithmetic", "eval", 200):
        assert int(question.answer) == _chain_value(question.question)
        assert question.grader == "numeric"


def test_choice_questions_have_one_right_choice() -> None:
    for question in builtin_questions("choice", "eval", 200):
        assert question.grader == "choice" and len(question.choices) == 4
        assert len(set(question.choices)) == 4
        value = _chain_value(question.question)
        right = [i for i, c in enumerate(question.choices) if int(c) == value]
        assert right == ["ABCD".index(question.answer)]
        assert question.prompt().splitlines()[1:5] == [
            f"{letter}) {choice}" for letter, choice in zip("ABCD", question.choices, strict=True)
        ]


@pytest.mark.parametrize("name", ["legs", "gsm"])
def test_word_problems_have_whole_number_answers(name: str) -> None:
    for question in builtin_questions(name, "eval", 100):
        assert re.fullmatch(r"-?\d+", question.answer), question
        assert question.grader == "numeric"


def test_unknown_set_and_bad_arguments() -> None:
    with pytest.raises(QuestionSetError, match="unknown question set 'trivia'"):
        load_questions("trivia")
    with pytest.raises(QuestionSetError, match="split must be one of"):
        builtin_questions("arithmetic", "test", 3)
    with pytest.raises(QuestionSetError, match="at least one question"):
        builtin_questions("arithmetic", "eval", 0)


def test_a_generator_with_few_distinct_items_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlcpatch.eval import questions

    tiny = questions.BuiltinSet("tiny", "three questions", lambda i: (f"q{i % 3}?", "1", (), "1"))
    monkeypatch.setitem(questions.BUILTIN_SETS, "tiny", tiny)
    found = len({q for q in ("q0?", "q1?", "q2?") if questions.split_of(q) == "train"})
    with pytest.raises(QuestionSetError, match=f"only {found} distinct train questions"):
        builtin_questions("tiny", "train", 5)


def _write(tmp_path: pathlib.Path, rows: list[object]) -> pathlib.Path:
    path = tmp_path / "qs.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_files_with_numbers_choices_and_text(tmp_path: pathlib.Path) -> None:
    path = _write(
        tmp_path,
        [
            {"question": "2+2?", "answer": 4},
            "",
            {"question": "Capital of France?", "answer": "Paris", "id": "geo-1"},
            {"question": "Which is even?", "choices": ["3", "8", "5"], "answer": "8"},
            {"question": "Pick", "choices": ["x", "y"], "answer": "(b)", "grader": "choice"},
        ],
    )
    questions = read_jsonl(path)
    assert [(q.id, q.answer, q.grader) for q in questions] == [
        ("qs-1", "4", "numeric"),
        ("geo-1", "Paris", "exact"),
        ("qs-4", "B", "choice"),
        ("qs-5", "B", "choice"),
    ]
    assert load_questions(str(path), size=2) == questions[:2]


def test_jsonl_solutions_are_read_and_must_reach_the_answer(tmp_path: pathlib.Path) -> None:
    good = {"question": "3+4?", "answer": "7", "solution": "3 + 4 = 7"}
    (question,) = read_jsonl(_write(tmp_path, [good]))
    assert question.solution == "3 + 4 = 7"
    assert question.to_json()["solution"] == "3 + 4 = 7"
    with pytest.raises(QuestionSetError, match=r"qs.jsonl:1: the solution does not end in"):
        read_jsonl(_write(tmp_path, [{**good, "solution": "3 + 4 = 8"}]))


@pytest.mark.parametrize("name", sorted(BUILTIN_SETS))
def test_builtin_solutions_reach_the_gold_answer(name: str) -> None:
    from mlcpatch.eval.grading import grade

    for q in builtin_questions(name, "train", 60):
        assert q.solution and q.solution != q.answer
        assert grade(q.grader, q.solution, q.answer, list(q.choices)), (q.solution, q.answer)
        if name in ("arithmetic", "choice"):
            # each step of the running total is right, by our own arithmetic
            numbers = [int(n) for n in re.findall(r"-?\d+", q.solution.split(",")[0])]
            total = numbers[0]
            steps = re.findall(r"([-+]) (\d+) = (-?\d+)", q.solution)
            assert steps
            for op, value, shown in steps:
                total = total + int(value) if op == "+" else total - int(value)
                assert total == int(shown), q.solution
            assert total == _chain_value(q.question)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["{not json"], r"qs.jsonl:1: not valid JSON"),
        ([{"answer": "4"}], r"qs.jsonl:1: missing field 'question'"),
        ([{"question": "q", "answer": ""}], r"field 'answer' is empty"),
        ([{"question": "q", "answer": "A", "choices": "AB"}], r"'choices' must be a list"),
        ([{"question": "q", "answer": "Z", "choices": ["a", "b"]}], r"neither a choice letter"),
        ([{"question": "q", "answer": "four", "grader": "numeric"}], r"has no number"),
        ([{"question": "q", "answer": "4", "grader": "fuzzy"}], r"grader must be one of"),
        ([{"question": "q", "answer": "1", "id": "a"}] * 2, r"qs.jsonl:2: id 'a' appears twice"),
        ([[1, 2]], r"expected a JSON object"),
        ([""], r"no questions"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: pathlib.Path, rows: list, message: str) -> None:
    with pytest.raises(QuestionSetError, match=message):
        read_jsonl(_write(tmp_path, rows))


def test_missing_file_is_a_clear_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(QuestionSetError, match="no such file"):
        load_questions(str(tmp_path / "none.jsonl"))


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_calibration_text_shares_nothing_with_any_question_set() -> None:
    text = calibration_text()
    assert not re.search(r"\d", text)  # so no numeric answer or operand can be in it
    calibration = " ".join(_words(text))
    assert len(calibration.split()) > 2000  # several times SmolLM2's hidden size in tokens
    for name in BUILTIN_SETS:
        for split in ("eval", "train"):
            for question in builtin_questions(name, split, 100):
                words = _words(question.prompt())
                for start in range(max(1, len(words) - 5)):
                    window = " ".join(words[start : start + 6])
                    if len(window.split()) == 6:
                        assert window not in calibration, (name, window)
