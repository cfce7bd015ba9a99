"""The Deliberation pattern's local tools: a calculator that cannot run code, and a search."""

from __future__ import annotations

import pytest

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
