"""Graders: is a model's completion the right answer? Numeric, multiple-choice letter, exact text.

Models write answers in many shapes ("The answer is $1,250.", "\\boxed{-3.5}", "B) 12",
"#### 42"). Each grader pulls out the one answer a completion commits to and compares it with
the gold answer in a canonical form. Where a completion states its answer explicitly (a box,
"####", "answer is/:"), that wins over whatever number comes last.
"""

from __future__ import annotations

import re
from fractions import Fraction

GRADERS = ("numeric", "choice", "exact")

# A number: optional sign, digits with thousands commas or plain, optional decimals, or a
# bare decimal; optionally a simple fraction (3/4). Signs glued to a word ("x-3") are not signs.
_NUMBER = re.compile(
    r"(?<![\w.])([-+−]?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*(\d+)(?![\d.]))?"
)
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_HASHES = re.compile(r"####\s*([^\n]+)")
_STATED = re.compile(r"(?i)\b(?:final\s+)?answer\s*(?:is|:|=)\s*:?\s*([^\n]+)")
# "answer is (B)", "Answer: C", "B)", "(B)", "B." at the start of the completion or a line.
# Only a letter in parentheses may be lower case: "answer is a" names no choice, "(a)" does.
_STATED_CHOICE = re.compile(
    r"(?i:answer)\s*(?:(?i:is)|:)?\s*(?:\(([A-Ja-j])\)|([A-J])(?![A-Za-z]))"
)
_LONE_CHOICE = re.compile(r"(?m)^\s*(?:\(([A-J])\)|([A-J])(?:[.):]|\s*$))")


def _numbers(text: str) -> list[Fraction]:
    values = []
    for sign, digits, denominator in _NUMBER.findall(text):
        value = Fraction(digits.replace(",", ""))
        if denominator:
            if int(denominator) == 0:
                continue
            value /= int(denominator)
        if sign in ("-", "−"):
            value = -value
        values.append(value)
    return values


def _explicit_parts(text: str) -> list[str]:
    """Where the completion says 'this is my answer', most explicit first."""
    parts = [m.group(1) for m in _BOXED.finditer(text)][-1:]
    parts += [m.group(1) for m in _HASHES.finditer(text)][-1:]
    parts += [m.group(1) for m in _STATED.finditer(text)][-1:]
    return parts


def extract_number(text: str) -> Fraction | None:
    """The number a completion commits to: boxed, after ####, after 'answer is', else the last."""
    for part in _explicit_parts(text):
        found = _numbers(part.replace("$", " "))
        if found:
            return found[0]
    found = _numbers(text.replace("$", " "))
    return found[-1] if found else None


def extract_choice(text: str) -> str | None:
    """A multiple-choice letter A-J: a stated one ("answer is C") wins, then a leading one."""
    stated = _STATED_CHOICE.findall(text)
    if stated:
        return "".join(stated[-1]).upper()
    boxed = [m.group(1).strip() for m in _BOXED.finditer(text)]
    if boxed and re.fullmatch(r"\(?[A-J]\)?", boxed[-1]):
        return boxed[-1].strip("()")
    lone = _LONE_CHOICE.search(text)
    if lone:
        return lone.group(1) or lone.group(2)
    return None


def normalize_text(text: str) -> str:
    return " ".join(text.strip().lower().split()).strip(" .!\"'")


def grade(grader: str, completion: str, gold: str, choices: list[str] | None = None) -> bool:
    """True when `completion` gives the gold answer under `grader`."""
    if grader == "numeric":
        want = extract_number(gold)
        if want is None:
            raise ValueError(f"numeric grader: gold answer {gold!r} has no number")
        got = extract_number(completion)
        return got is not None and got == want
    if grader == "choice":
        want_letter = gold.strip().strip("()").upper()
        got = extract_choice(completion)
        if got is None and choices:
            # No letter at all: accept the text of exactly one choice, said on its own.
            said = normalize_text(completion)
            matches = [i for i, c in enumerate(choices) if normalize_text(c) == said]
            if len(matches) == 1:
                got = "ABCDEFGHIJ"[matches[0]]
        return got == want_letter
    if grader == "exact":
        explicit = _explicit_parts(completion)
        candidate = explicit[0] if explicit else completion
        return normalize_text(candidate) == normalize_text(gold)
    raise ValueError(f"unknown grader {grader!r}; one of {GRADERS}")


def infer_grader(answer: str, choices: list[str] | None) -> str:
    """choice with choices, numeric when the gold answer is one number, else exact."""
    if choices:
        return "choice"
    return "numeric" if re.fullmatch(r"\s*\$?" + _NUMBER.pattern + r"\s*", answer) else "exact"
