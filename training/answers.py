"""Final-answer extraction for exact-match accuracy: numbers and multiple-choice letters."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
# "answer is (B)", "Answer: C", "#### D"
# Only the keyword is case-insensitive: a lower-case "a" is an article, not a choice.
_STATED_CHOICE = re.compile(r"(?i:answer)\s*(?:(?i:is)|:)?\s*\(?([A-J])\)?(?![A-Za-z])")
# "B", "B)", "(B)", "B." at the start; a bare letter before a space ("I think") is not a choice.
_LONE_CHOICE = re.compile(r"^(?:\(([A-J])\)|([A-J])(?:[.):]|$))")
_AFTER_HASHES = re.compile(r"####\s*(.+)")


def _canonical_number(text: str) -> str:
    value = text.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    if value in ("-0", ""):
        value = "0"
    return value


def extract_answer(text: str) -> str:
    """The final answer in a completion or a gold label, in canonical form.

    A stated choice letter wins, then a leading choice letter ("B) 12"), then the last number
    (GSM8K's '#### 42' included), else the trimmed, lower-cased text.
    """
    text = text.strip()
    hashes = _AFTER_HASHES.search(text)
    if hashes:
        text = hashes.group(1).strip()
    stated = _STATED_CHOICE.search(text)
    if stated:
        return stated.group(1).upper()
    lone = _LONE_CHOICE.match(text)
    if lone:
        return lone.group(1) or lone.group(2)
    numbers = _NUMBER.findall(text)
    if numbers:
        return _canonical_number(numbers[-1])
    return " ".join(text.lower().split()).rstrip(".")


def is_correct(prediction: str, gold: str) -> bool:
    return extract_answer(prediction) == extract_answer(gold)
