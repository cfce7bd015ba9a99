"""Question sets with exact answers: generated built-in sets and users' JSONL files.

Built-in sets come from `reasoning-gym` generators, and every item is checked here before it is
used (an expression is recomputed, a chain of thought's equations are redone, legs are counted
with our own table); items that fail the check are dropped and counted.

Train and eval splits never overlap: an item's split is a function of its question text alone
(a hash), not of a seed or an index. That matters because reasoning-gym seeds item `i` of seed
`s` with `s + i`, so two "different" seeds share most of their items.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mlcpatch.errors import MlcpatchError
from mlcpatch.eval.grading import GRADERS, extract_number, grade, infer_grader
from mlcpatch.loop.tools import CalculatorError, calculate

SPLITS = ("train", "eval")
EVAL_SHARE = 4  # one item in EVAL_SHARE goes to the eval split
LETTERS = "ABCDEFGHIJ"


class QuestionSetError(MlcpatchError, ValueError):
    """A question set cannot be read or made; the message names the file, line or set."""


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    grader: str
    choices: tuple[str, ...] = ()
    source: str = ""
    solution: str = ""  # a worked answer ending in the gold answer; what training can imitate

    def prompt(self) -> str:
        """What the agents are asked: the question, and its choices as lettered lines."""
        if not self.choices:
            return self.question
        lines = [f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices)]
        return "\n".join([self.question, *lines, "Answer with the letter of the right choice."])

    def to_json(self) -> dict:
        data = {"id": self.id, "question": self.question, "answer": self.answer}
        if self.choices:
            data["choices"] = list(self.choices)
        data["grader"] = self.grader
        if self.solution:
            data["solution"] = self.solution
        return data


def split_of(text: str) -> str:
    """The split an item belongs to, from its text only (so splits can never share an item)."""
    digest = hashlib.sha256(" ".join(text.split()).encode("utf-8")).digest()
    return "eval" if digest[0] % EVAL_SHARE == 0 else "train"


# -- built-in generators: each yields (question, answer, choices, solution) for index i, or None -

Item = tuple[str, str, tuple[str, ...], str] | None


def _calc(expression: str) -> float | None:
    try:
        return calculate(expression)
    except CalculatorError:
        return None


def _arithmetic(index: int) -> Item:
    import reasoning_gym

    entry = reasoning_gym.create_dataset(
        "chain_sum", seed=index, size=1, min_terms=2, max_terms=3, min_digits=1, max_digits=2
    )[0]
    value = _calc(entry["metadata"]["expression"])
    if value is None or str(int(value)) != entry["answer"]:
        return None
    solution = running_total(entry["metadata"]["expression"])
    if solution is None or extract_number(solution) != extract_number(entry["answer"]):
        return None
    return entry["question"], entry["answer"], (), solution


def running_total(expression: str) -> str | None:
    """'98 + 93 - 77' -> '98 + 93 = 191 - 77 = 114': one operation at a time, short enough for
    a small answer budget (the spelled-out 'a = b, b - c = d' form needs a quarter more tokens)."""
    parts = expression.split()
    if len(parts) < 3 or len(parts) % 2 == 0:
        return None
    try:
        total = int(parts[0])
        text = parts[0]
        for op, number in zip(parts[1::2], parts[2::2], strict=True):
            if op not in "+-" or len(op) != 1:
                return None
            total = total + int(number) if op == "+" else total - int(number)
            text += f" {op} {number} = {total}"
    except ValueError:
        return None
    return text


_EQUATION = re.compile(
    r"(?<![\d./])(-?[\d.]+(?:\s*[-+×x*/÷]\s*-?[\d.]+)+)\s*=\s*(-?[\d.]+)(?![\d./])"
)


def _gsm(index: int) -> Item:
    import reasoning_gym

    entry = reasoning_gym.create_dataset("gsm_symbolic", seed=index, size=1)[0]
    cot = entry["metadata"].get("answer_cot", "")
    stated = re.findall(r"####\s*(-?[\d.]+)", cot)
    if not stated or float(stated[-1]) != float(entry["answer"]):
        return None
    for left, right in _EQUATION.findall(cot):
        value = _calc(left.replace("×", "*").replace("÷", "/").replace("x", "*"))
        if value is None or abs(value - float(right)) > 1e-6 * max(1.0, abs(value)):
            return None
    steps = "\n".join(line.strip() for line in cot.split("####")[0].splitlines() if line.strip())
    answer = entry["answer"]
    solution = f"{steps.rstrip('.')}.\nThe answer is {answer}." if steps else answer
    return entry["question"], answer, (), solution


# Our own count, to check the generator's: legs per animal, as biology has them.
LEGS = {
    "snake": 0, "sea slug": 0, "jellyfish": 0, "flatworm": 0, "leech": 0,
    "chicken": 2, "bird": 2, "human": 2, "duck": 2,
    "dog": 4, "cat": 4, "cow": 4, "horse": 4, "lion": 4, "elephant": 4, "giraffe": 4,
    "tiger": 4, "deer": 4, "sheep": 4, "starfish": 5,
    "insect": 6, "ant": 6, "butterfly": 6, "beetle": 6, "bee": 6, "wasp": 6,
    "grasshopper": 6, "cricket": 6, "cockroach": 6, "praying mantis": 6, "firefly": 6,
    "spider": 8, "scorpion": 8, "crab": 10, "lobster": 10, "shrimp": 10, "woodlouse": 14,
}  # fmt: skip


def _legs(index: int) -> Item:
    import reasoning_gym

    entry = reasoning_gym.create_dataset(
        "leg_counting", seed=index, size=1, min_animals=2, max_animals=3, max_instances=6
    )[0]
    animals = entry["metadata"]["animals"]
    if any(a not in LEGS for a in animals):
        return None
    if sum(LEGS[a] * n for a, n in animals.items()) != int(entry["answer"]):
        return None
    question = entry["question"].split("\n\n")[-1].strip()
    counts = [f"{n} {a}: {n} × {LEGS[a]} = {n * LEGS[a]}" for a, n in animals.items()]
    total = " + ".join(str(n * LEGS[a]) for a, n in animals.items())
    solution = f"{'; '.join(counts)}. Total: {total} = {entry['answer']}"
    return question[0].upper() + question[1:], entry["answer"], (), solution


def _choice(index: int) -> Item:
    """Four-way multiple choice over a chain sum; distractors are near misses."""
    item = _arithmetic(index)
    if item is None:
        return None
    question, answer, _, worked = item
    right = int(answer)
    rng = random.Random(f"choice-{index}")
    wrong: set[int] = set()
    for delta in rng.sample([-10, -2, -1, 1, 2, 10, 11, -11], 8):
        if len(wrong) == 3:
            break
        wrong.add(right + delta)
    options = [right, *sorted(wrong)]
    rng.shuffle(options)
    letter = LETTERS[options.index(right)]
    text = question.replace("State the final answer to the following arithmetic problem:", "")
    return (
        f"Which is the value of {text.strip().rstrip('=').strip()}?",
        letter,
        tuple(str(o) for o in options),
        f"{worked}, so the answer is {letter}.",
    )


@dataclass(frozen=True)
class BuiltinSet:
    name: str
    description: str
    make: Callable[[int], Item] = field(repr=False)


BUILTIN_SETS: dict[str, BuiltinSet] = {
    s.name: s
    for s in (
        BuiltinSet("arithmetic", "sums and differences of 2-3 numbers below 100", _arithmetic),
        BuiltinSet("legs", "word problems: count the legs of a few kinds of animals", _legs),
        BuiltinSet("gsm", "GSM8K-style symbolic word problems (several steps)", _gsm),
        BuiltinSet("choice", "four-way multiple choice over sums and differences", _choice),
    )
}
MAX_TRIES_PER_ITEM = 40
GIVE_UP_AFTER = 2000  # consecutive generator indices that brought nothing new


def builtin_questions(name: str, split: str, size: int, seed: int = 0) -> list[Question]:
    """`size` distinct checked items of a built-in set in `split`, the same for the same seed."""
    if name not in BUILTIN_SETS:
        raise QuestionSetError(
            f"unknown question set {name!r}; built-in: {', '.join(BUILTIN_SETS)} (or a .jsonl file)"
        )
    if split not in SPLITS:
        raise QuestionSetError(f"split must be one of {SPLITS}, not {split!r}")
    if size < 1:
        raise QuestionSetError("a question set needs at least one question")
    maker = BUILTIN_SETS[name].make
    found: list[Question] = []
    seen: set[str] = set()
    start = seed * 1_000_003
    last_new = start
    for index in range(start, start + size * MAX_TRIES_PER_ITEM):
        if index - last_new > GIVE_UP_AFTER:
            break
        item = maker(index)
        if item is None:
            continue
        question, answer, choices, solution = item
        key = " ".join(question.split())  # choices aside: the question itself must not leak
        if key in seen or split_of(key) != split:
            continue
        seen.add(key)
        last_new = index
        grader = "choice" if choices else infer_grader(answer, None)
        qid = f"{name}-{split}-{index}"
        found.append(Question(qid, question, answer, grader, choices, name, solution))
        if len(found) == size:
            return found
    raise QuestionSetError(
        f"question set {name}: only {len(found)} distinct {split} questions found, {size} asked"
    )


# -- JSONL files -----------------------------------------------------------------------------------


def _text(record: dict, key: str, where: str, required: bool = True) -> str | None:
    if key not in record:
        if required:
            raise QuestionSetError(f"{where}: missing field {key!r}")
        return None
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise QuestionSetError(
            f"{where}: field {key!r} must be a string, got {type(value).__name__}"
        )
    text = str(value).strip()
    if not text:
        raise QuestionSetError(f"{where}: field {key!r} is empty")
    return text


def read_jsonl(path: Path) -> list[Question]:
    """{"question", "answer", optional "choices" (list), "id", "grader", "solution"} per line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise QuestionSetError(f"{path}: no such file") from None
    except UnicodeDecodeError as err:
        raise QuestionSetError(f"{path}: not UTF-8 text ({err.reason})") from None
    questions: list[Question] = []
    ids: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise QuestionSetError(
                f"{where}: not valid JSON ({err.msg} at column {err.colno})"
            ) from None
        if not isinstance(record, dict):
            raise QuestionSetError(f"{where}: expected a JSON object, got {type(record).__name__}")
        question = _text(record, "question", where)
        answer = _text(record, "answer", where)
        choices_raw = record.get("choices")
        choices: tuple[str, ...] = ()
        if choices_raw is not None:
            if (
                not isinstance(choices_raw, list)
                or not 2 <= len(choices_raw) <= len(LETTERS)
                or not all(isinstance(c, str | int | float) for c in choices_raw)
            ):
                raise QuestionSetError(
                    f"{where}: 'choices' must be a list of 2 to {len(LETTERS)} texts"
                )
            choices = tuple(str(c) for c in choices_raw)
            answer = _choice_letter(answer, choices, where)  # type: ignore[arg-type]
        grader = _text(record, "grader", where, required=False) or infer_grader(answer, choices)  # type: ignore[arg-type]
        if grader not in GRADERS:
            raise QuestionSetError(f"{where}: grader must be one of {GRADERS}, not {grader!r}")
        if grader == "numeric" and extract_number(answer) is None:  # type: ignore[arg-type]
            raise QuestionSetError(f"{where}: numeric answer {answer!r} has no number")
        qid = _text(record, "id", where, required=False) or f"{path.stem}-{number}"
        if qid in ids:
            raise QuestionSetError(f"{where}: id {qid!r} appears twice")
        ids.add(qid)
        solution = _text(record, "solution", where, required=False) or ""
        if solution and not grade(grader, solution, answer, list(choices)):  # type: ignore[arg-type]
            raise QuestionSetError(
                f"{where}: the solution does not end in the answer {answer!r} "
                f"(graded {grader}); training would teach a wrong answer"
            )
        questions.append(Question(qid, question, answer, grader, choices, str(path), solution))  # type: ignore[arg-type]
    if not questions:
        raise QuestionSetError(f"{path}: no questions")
    return questions


def _choice_letter(answer: str, choices: tuple[str, ...], where: str) -> str:
    """Gold for a choice question is a letter; a file may give the choice's text instead."""
    letter = answer.strip().strip("()").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return letter
    matches = [i for i, c in enumerate(choices) if c.strip() == answer.strip()]
    if len(matches) == 1:
        return LETTERS[matches[0]]
    raise QuestionSetError(f"{where}: answer {answer!r} is neither a choice letter nor a choice")


def load_questions(
    source: str, split: str = "eval", size: int = 0, seed: int = 0
) -> list[Question]:
    """A built-in set's split (size 0: 200), or a JSONL file (used whole, or its first `size`)."""
    path = Path(source)
    if source.endswith(".jsonl") or path.is_file():
        questions = read_jsonl(path)
        return questions[:size] if size else questions
    return builtin_questions(source, split, size or 200, seed)


def iter_lines(questions: list[Question]) -> Iterator[str]:
    for q in questions:
        yield json.dumps(q.to_json(), ensure_ascii=False)
