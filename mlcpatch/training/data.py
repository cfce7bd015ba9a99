"""Question/answer data from JSONL files, and the small sample set shipped with the package."""

from __future__ import annotations

import pathlib
import random
from dataclasses import dataclass

from mlcpatch.errors import MlcpatchError
from mlcpatch.resources import training_data_dir


class DataError(MlcpatchError, ValueError):
    """A data file is unreadable or a line is malformed; the message names file, line and field."""


@dataclass(frozen=True)
class Example:
    question: str
    answer: str  # what grading compares with
    solution: str = ""  # a worked answer ending in `answer`, when the data has one

    def target(self, kind: str) -> str:
        """The text the final agent is trained to write: the worked solution when asked for and
        present, else the bare answer."""
        return self.solution if kind == "solution" and self.solution else self.answer


BUILTIN_NAME = "sample.jsonl"


def builtin_path() -> pathlib.Path:
    return training_data_dir() / BUILTIN_NAME


def load_jsonl(path: pathlib.Path | str) -> list[Example]:
    """Question/answer lines in `mlcpatch eval`'s JSONL format (`question`, `answer`, optional
    `choices`, `id`, `grader`, `solution`); a question with choices is asked, and answered, as
    eval asks it (lettered choices, the letter as the answer)."""
    from mlcpatch.eval.questions import QuestionSetError, read_jsonl

    try:
        questions = read_jsonl(pathlib.Path(path))
    except QuestionSetError as err:
        raise DataError(str(err)) from None
    return [Example(q.prompt(), q.answer, q.solution) for q in questions]


def load_builtin() -> list[Example]:
    return load_jsonl(builtin_path())


def builtin_texts() -> list[str]:
    """Plain text from the sample set, for inner-link fitting when no data is given."""
    return [f"Question: {e.question}\nAnswer: {e.answer}" for e in load_builtin()]


def split_examples(
    examples: list[Example], validation_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded train/validation split; with one example, both sets are that example."""
    if validation_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = max(1, int(round(len(examples) * validation_fraction)))
    count = min(count, len(examples) - 1)
    valid = [examples[i] for i in order[:count]]
    train = [examples[i] for i in order[count:]]
    return train, valid
