"""Graders on the answers models really write: units, commas, signs, boxes, letters, prose."""

from __future__ import annotations

import pytest

from mlcpatch.eval.grading import extract_choice, grade, infer_grader


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("7", "7"),
        ("The answer is 1,234.50", "1234.5"),
        ("so #### 42", "42"),
        ("I think it is 7.", "7"),
        ("x = -3.0", "-3"),
        ("She pays $1,250 in total.", "1250"),
        ("It costs $12.50", "12.5"),
        ("The result is \\boxed{-103}.", "-103"),
        ("\\boxed{\\frac{3}{4}}... no wait, \\boxed{0.75}", "0.75"),
        ("Total: 36 apples", "36"),
        ("Step 1: 4 + 5 = 9. Step 2: 9 * 2 = 18. The answer is 18.", "18"),
        ("The answer is 18. (Check: 18 - 9 = 9)", "18"),
        ("−5 degrees", "-5"),
        ("3/4 of the cake", "0.75"),
        ("-0", "0"),
        ("The final answer: 2,000,000", "2000000"),
    ],
)
def test_numeric_grader_accepts(completion: str, gold: str) -> None:
    assert grade("numeric", completion, gold)


@pytest.mark.parametrize(
    ("completion", "gold"),
    [
        ("17", "16"),
        ("The answer is 18. (Check: 18 - 9 = 9)", "9"),  # the stated answer wins
        ("x-3", "-3"),  # a hyphen inside a word is not a sign
        ("", "4"),
        ("no idea", "4"),
        ("1,234", "1.234"),
        ("12.5", "125"),
        ("4 + 3 = 7, so 8", "7"),  # the last number is the committed one
    ],
)
def test_numeric_grader_rejects(completion: str, gold: str) -> None:
    assert not grade("numeric", completion, gold)


@pytest.mark.parametrize(
    ("completion", "letter"),
    [
        ("B) 9", "B"),
        ("(C)", "C"),
        ("Answer: D because the sum is larger", "D"),
        ("the answer is (a)", "A"),
        ("After thinking, the answer is B.", "B"),
        ("A.", "A"),
        ("\\boxed{C}", "C"),
    ],
)
def test_choice_grader_reads_the_letter(completion: str, letter: str) -> None:
    assert extract_choice(completion) == letter
    assert grade("choice", completion, letter)
    assert not grade("choice", completion, "E")


def test_choice_grader_is_not_fooled_by_articles_and_pronouns() -> None:
    assert extract_choice("I think a good answer would be the second one") is None
    assert not grade("choice", "I think so", "I")
    # No letter, but exactly the text of one choice.
    assert grade("choice", "12", "B", ["10", "12", "14"])
    assert not grade("choice", "13", "B", ["10", "12", "14"])


def test_exact_grader_normalises_case_space_and_final_period() -> None:
    assert grade("exact", "  Paris. ", "paris")
    assert grade("exact", "The answer is: Blue Whale", "blue whale")
    assert not grade("exact", "Paris, France", "Paris")


def test_grader_inference_and_errors() -> None:
    assert infer_grader("42", None) == "numeric"
    assert infer_grader("-3.5", None) == "numeric"
    assert infer_grader("1,000", None) == "numeric"
    assert infer_grader("B", ["x", "y"]) == "choice"
    assert infer_grader("Paris", None) == "exact"
    assert infer_grader("3 apples", None) == "exact"
    with pytest.raises(ValueError, match="unknown grader"):
        grade("fuzzy", "a", "a")
    with pytest.raises(ValueError, match="has no number"):
        grade("numeric", "4", "four")
