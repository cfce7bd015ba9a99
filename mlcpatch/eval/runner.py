"""Running every mode over a question set, one JSONL line per (question, mode), resumable.

Modes are asked question by question, in a fixed order, so every mode sees the same questions
on the same machine at about the same time (ratios of seconds stay fair when the machine's
load drifts). A stopped run keeps every line it wrote; starting it again with the same settings
skips what is done. One-time costs (opening models, fitting links) are kept apart in
`run.json`; per-question seconds never include them.

With a batch size above 1, each mode answers up to that many questions at once (the loop's
`run_batch`): questions still go through every mode in the same order, a batch at a time, and
each answer's seconds are its equal share of its batch's time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlcpatch.errors import MlcpatchError
from mlcpatch.eval.grading import grade
from mlcpatch.eval.questions import Question
from mlcpatch.loop.orchestrator import RunResult

RESULTS = "results.jsonl"
RUN_INFO = "run.json"

# A mode: its label and how it answers questions (prompt texts), one RunResult each.
Solver = Callable[[list[str]], list[RunResult]]


class EvalError(MlcpatchError, ValueError):
    """The output folder holds a different run, or a results file is damaged."""


@dataclass(frozen=True)
class Mode:
    label: str  # "single", "text", "latent", "latent:<links>"
    solve: Solver


def record(question: Question, mode: str, result: RunResult) -> dict[str, Any]:
    return {
        "id": question.id,
        "mode": mode,
        "question": question.question,
        "gold": question.answer,
        "grader": question.grader,
        "answer": result.answer,
        "correct": grade(question.grader, result.answer, question.answer, list(question.choices)),
        "tokens_generated": result.tokens_generated,
        "positions_processed": result.total("positions_processed"),
        "seconds": round(result.seconds, 6),
    }


def read_results(path: Path) -> list[dict[str, Any]]:
    """Every complete line; a last line cut short by a stop is dropped from the file."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    rows: list[dict[str, Any]] = []
    good = 0
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # written partly when the run was stopped
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise EvalError(
                f"{path}: line {len(rows) + 1} is not JSON; move the file away to start over"
            ) from None
        good += len(line)
    if good != len(raw):
        with path.open("r+b") as handle:
            handle.truncate(good)
    return rows


def check_run(
    out: Path, identity: dict[str, Any], modes: dict[str, str], overwrite: bool
) -> dict[str, Any]:
    """The run's description, new or resumed. A resumed run must have the same questions,
    models and settings; it may add modes (a new link file), but a mode's label may not now
    name a different link file."""
    info_path = out / RUN_INFO
    if overwrite:
        for name in (RESULTS, RUN_INFO):
            (out / name).unlink(missing_ok=True)
    if not info_path.is_file():
        return {"identity": identity, "modes": dict(modes), "setup": []}
    try:
        info = json.loads(info_path.read_text())
        before = info["identity"]
        known = info["modes"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise EvalError(f"{info_path} is damaged; use another --out or --overwrite") from None
    if before != identity:
        changed = sorted(k for k in set(identity) | set(before) if identity.get(k) != before.get(k))
        raise EvalError(
            f"{out} holds a run with other settings ({', '.join(changed)}); use another "
            "--out, or --overwrite to start over"
        )
    for label, digest in modes.items():
        if label in known and known[label] != digest:
            raise EvalError(
                f"{out}: mode {label} was run with another link file; rename the file, use "
                "another --out, or --overwrite"
            )
        known[label] = digest
    return info


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def evaluate(
    questions: list[Question],
    modes: list[Mode],
    out: Path,
    progress: Callable[[int, int], Any] | None = None,
    done: Iterable[tuple[str, str]] = (),
    batch: int = 1,
) -> list[dict[str, Any]]:
    """Answer every question in every mode not yet `done`, `batch` questions at a time; append
    a line per answer."""
    if batch < 1:
        raise EvalError("the batch size must be at least 1")
    finished = set(done)
    total = sum((q.id, m.label) not in finished for q in questions for m in modes)
    rows: list[dict[str, Any]] = []
    with (out / RESULTS).open("a", encoding="utf-8") as handle:
        for start in range(0, len(questions), batch):
            group = questions[start : start + batch]
            for mode in modes:
                todo = [q for q in group if (q.id, mode.label) not in finished]
                if not todo:
                    continue
                results = mode.solve([q.prompt() for q in todo])
                for question, result in zip(todo, results, strict=True):
                    row = record(question, mode.label, result)
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                    rows.append(row)
                handle.flush()
                os.fsync(handle.fileno())  # a line written is a line kept, whatever stops us
                if progress is not None:
                    progress(len(rows), total)
    return rows


def timed(label: str, setup: list[dict[str, Any]], work: Callable[[], Any]) -> Any:
    began = time.perf_counter()
    value = work()
    setup.append({"what": label, "seconds": round(time.perf_counter() - began, 3)})
    return value
