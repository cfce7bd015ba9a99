"""Question/answer data from JSONL files, and the small sample set shipped with the package."""

from __future__ import annotations

import json
import pathlib
import random
from dataclasses import dataclass
from importlib import resources


class DataError(ValueError):
    """A data file is unreadable or a line is malformed; the message names file, line and field."""


@dataclass(frozen=True)
class Example:
    question: str
    answer: str


BUILTIN_NAME = "sample.jsonl"


def builtin_path() -> pathlib.Path:
    return pathlib.Path(str(resources.files("mlcpatch.training") / "data" / BUILTIN_NAME))


def _field(record: dict[str, object], name: str, where: str) -> str:
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    value = record[name]
    # Numeric answers are common in JSONL exports (GSM8K-style); keep them as text.
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise DataError(f"{where}: field {name!r} is empty")
    return text


def load_jsonl(path: pathlib.Path | str) -> list[Example]:
    """Read {"question", "answer"} objects, one per line; blank lines and extra fields are fine."""
    path = pathlib.Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such file") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from err
    examples: list[Example] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from err
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        examples.append(Example(_field(record, "question", where), _field(record, "answer", where)))
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


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
