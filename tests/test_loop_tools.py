"""The Deliberation pattern's local tools: a calculator that cannot run code, and a search."""

from __future__ import annotations

import ast
import random
import re

import pytest

from mlcpatch.loop import tools
from mlcpatch.loop.tools import (
    CalculatorError,
    calculate,
    calculator_tool,
    load_documents,
    search,
    search_tool,
)


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("3 + 4 * 2", 11),
        ("(3 + 4) * 2", 14),
        ("2^10", 1024),
        ("7 // 2", 3),
        ("-5 + 2", -3),
        ("sqrt(16) + abs(-2)", 6),
        ("6 x 7", 42),
        ("10 / 4", 2.5),
    ],
)
def test_calculator_values(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "2 ** 100000",
        "1 / 0",
        "x + 1",
        "[1, 2]",
        "(lambda: 1)()",
    ],
)
def test_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(CalculatorError):
        calculate(expression)


def test_calculator_tool_finds_expressions_in_a_question() -> None:
    found = calculator_tool("If I have 12*12 + 1 apples and eat (3 + 4) * 2, what is left?")
    assert found == ["calculator: 12*12 + 1 = 145", "calculator: (3 + 4) * 2 = 14"]
    assert calculator_tool("What is the capital of France?") == []


def test_search_ranks_the_relevant_document_first() -> None:
    documents = load_documents()
    assert len(documents) >= 10
    assert search("How far away is the moon from Earth?", documents)[0].title == "Earth's moon"
    assert search("At what temperature does water boil?", documents)[0].title.startswith("Boiling")
    assert search("what is it", documents) == []  # only common words: nothing relevant
    assert search_tool("boiling water")[0].startswith("search: Boiling point of water:")


# Hostile inputs: the calculator's input is the user's question, so sizes are bounded before
# anything is computed (see MAX_BITS, MAX_LENGTH, MAX_QUESTION_LENGTH in tools.py).
NESTED_POWERS = [
    "(9**9999)**999",
    "(9**9999)**9999",
    "((9^9999)^9999)^9999",
    "(2^9999)^9999",
    "9^9999 * 9^9999",
    "16^10000",  # 5 bits x 10,000 > MAX_BITS
]


@pytest.mark.parametrize("expression", NESTED_POWERS)
def test_results_too_large_are_refused_before_computing(expression: str) -> None:
    with pytest.raises(CalculatorError, match="result too large"):
        calculate(expression)


def test_hostile_expressions_are_skipped_by_the_tool() -> None:
    question = "Is it " + " or ".join(NESTED_POWERS) + " or 6*7?"
    assert calculator_tool(question) == ["calculator: 6*7 = 42"]


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("9^9999 // 9^9998", 9),
        ("2^10000 // 2^9999", 2),
        ("15^10000 // 15^9999", 15),  # 4 bits x 10,000: the largest power still allowed
        ("10^400 / 10^399", 10.0),
        ("(2^5000)^2 // 2^9999", 2),
        ("123456789 * 987654321", 121932631112635269),
        ("2^0.5 * 2^0.5", 2.0000000000000004),
    ],
)
def test_large_intermediate_results_within_the_bounds_still_compute(
    expression: str, value: float
) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize("error", [MemoryError, RecursionError])
def test_running_out_of_memory_or_stack_skips_the_expression(
    monkeypatch: pytest.MonkeyPatch, error: type[Exception]
) -> None:
    def fail(a: float, b: float) -> float:
        raise error

    monkeypatch.setitem(tools._BINARY, ast.Mult, fail)
    with pytest.raises(CalculatorError):
        calculate("6*7")
    assert calculator_tool("What is 6*7 and 1+1?") == ["calculator: 1+1 = 2"]


def test_long_inputs_are_refused() -> None:
    with pytest.raises(CalculatorError, match="too long"):
        calculate("1" + "+1" * 100)  # 201 characters
    assert calculate("1" + "+1" * 99) == 100  # 199 characters
    assert calculator_tool("(" * 20_000) == []
    assert calculator_tool("(" * 20_000 + "6*7") == []
    long_question = "What is 6*7? " + "Padding. " * 1200
    assert len(long_question) > tools.MAX_QUESTION_LENGTH
    assert calculator_tool(long_question) == []
    fits = "What is 6*7? " + "(" * (tools.MAX_QUESTION_LENGTH - 13)
    assert len(fits) == tools.MAX_QUESTION_LENGTH
    assert calculator_tool(fits) == ["calculator: 6*7 = 42"]


# The expression pattern before it swallowed runs that hold no expression.
_PLAIN_EXPR_RE = re.compile(r"(?:sqrt\()?[\d.(][\d\s.+\-*/%()^x×÷]*[\d)]")


def test_expression_pattern_finds_what_the_plain_pattern_finds() -> None:
    rng = random.Random(7)
    chars = list("0123456789((()))..  +-*/%^x×÷ab\n") + ["sqrt(", "١", "\u2003"]
    for _ in range(3000):
        text = "".join(rng.choice(chars) for _ in range(rng.randint(0, 40)))
        found = [m.group(1) for m in tools._EXPR_RE.finditer(text) if m.group(1) is not None]
        assert found == _PLAIN_EXPR_RE.findall(text), text
    # A run of "(" is one match, not one scan per "(" (quadratic: 20,000 "(" took 2.7 s).
    assert len(list(tools._EXPR_RE.finditer("(" * 9_000))) == 1
