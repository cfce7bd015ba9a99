"""web/src/tools.js against mlcpatch/loop/tools.py: the same tool lines for the same questions.

The tool lines go into the Deliberation agents' prompts, so any difference would change the
browser's answer. Run in Node (no browser needed): fixed questions, then a few thousand random
expressions over the calculator's character set, compared value for value.

Inputs arithmetic rejects (sqrt of a negative, int -> float overflow, a complex power) are
CalculatorErrors on both sides, so the expression is skipped alike; those cases are checked
separately (see KNOWN_PYTHON_ESCAPES).
"""

from __future__ import annotations

import json
import math
import pathlib
import random
import shutil
import subprocess

import pytest

from mlcpatch.loop import tools

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS_JS = ROOT / "web" / "src" / "tools.js"
DOCUMENTS = ROOT / "web" / "data" / "documents.json"

DRIVER = """
import { readFileSync, writeFileSync } from "node:fs";
import { calculate, formatNumber, runTools } from "%s";

const [inputPath, documentsPath, outputPath] = process.argv.slice(2);
const cases = JSON.parse(readFileSync(inputPath, "utf8"));
const documents = JSON.parse(readFileSync(documentsPath, "utf8"));
const attempt = (fn) => {
  try {
    return { value: fn() };
  } catch (err) {
    return { error: err.name };
  }
};
const out = {
  expressions: cases.expressions.map((e) => attempt(() => formatNumber(calculate(e)))),
  questions: cases.questions.map((q) =>
    attempt(() => runTools(["calculator", "search"], q, documents)),
  ),
};
writeFileSync(outputPath, JSON.stringify(out));
"""

QUESTIONS = [
    "What is 6*7?",
    "A farmer has 12 apples and gives away 5. How many apples are left? 12 - 5",
    "Compute 2^10 + 3 x 4 and sqrt(16) / 8.",
    "What is 1000*1000, 1000.0*1000 and 10/4?",
    "How fast does light travel in vacuum?",
    "At what temperature does water boil at sea level?",
    "How long does the Moon take to orbit Earth? Is it 27.3 days?",
    "Which numbers are prime: 2, 3, 5, 7 or 9?",
    "What does list.append do in Python?",
    "How does binary search work on a sorted list of 1024 items? log2(1024) = 10",
    "Nothing here matches any note at all, zzz.",
    "What is (3 + 4) * (5 - 2) ÷ 7 and 9 × 9?",
    "Divide 1 by 0: 1/0, and 7 // 2, 7 % 3, -7 // 2",
    "Big: 99999999999 * 99999999999 and 2^100 and 123456789 * 987654321",
    "Floats: 0.1 + 0.2, 1.5 * 1.5, 2.675 * 100, 1/3, 2/3, 1e5",
    "Leading zeros: 007 + 1, 00 + 1, 0.5 + .5",
    "Powers: 2^0.5, 10^-3, 2^-2, 4^0.5, 2^10001",
    "Spacing: 3  x  4, 3x4, 3 x4, ( 2 + 3 ) * 4",
    "Gravity near Earth's surface is 9.81 metres per second squared; 9.81 * 2",
    "Unicode digits ١٢ + ٣ and full stops 3.14.15 + 1",
    "Round and abs: round(2.5) round(3.5) abs(0-4) sqrt(2) sqrt(0)",
    "Nested: ((((1 + 2) * 3) - 4) / 5) ^ 2",
    "Percent 50 % 7 and 12.5 % 3 and -12.5 % 3",
    "Mixed 1 + 2.0, 3 * 1.0, 6 / 3, 6 // 4.0",
    "Photosynthesis turns water and carbon dioxide into glucose: what powers it?",
]

# Tool inputs that raise ArithmeticError/ValueError or give a complex number inside Python's
# arithmetic: both calculators must turn them into a CalculatorError (skip the expression).
ARITHMETIC_FAILURES = ["sqrt(0-1)", "(0-8)^0.5", "10.0^400", "9^9999 * 1.0", "round(1e308*10)"]

CHARS = list("0123456789") * 3 + list("   .+-*/%()^x×÷") + ["**", "//", "sqrt(", "abs(", "round("]


def random_expression(rng: random.Random) -> str:
    return "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 14)))


def python_expression(expr: str) -> dict:
    try:
        value = tools.calculate(expr)
        return {"value": tools._format_number(value)}
    except tools.CalculatorError:
        return {"error": "CalculatorError"}
    except (ArithmeticError, ValueError, TypeError) as err:
        return {"escape": type(err).__name__}


def python_question(question: str) -> dict:
    try:
        return {"value": tools.run_tools(("calculator", "search"), question)}
    except (ArithmeticError, ValueError, TypeError) as err:
        return {"escape": type(err).__name__}


@pytest.fixture(scope="module")
def run_js(tmp_path_factory: pytest.TempPathFactory):
    # make test installs Node.js (npm's dependency); a missing one is a broken setup.
    assert shutil.which("node"), "Node.js is not installed: apt-get install -y nodejs"
    folder = tmp_path_factory.mktemp("tools-js")
    driver = folder / "driver.mjs"
    driver.write_text(DRIVER % TOOLS_JS.as_uri())

    def run(expressions: list[str], questions: list[str]) -> dict:
        cases = {"expressions": expressions, "questions": questions}
        (folder / "in.json").write_text(json.dumps(cases))
        subprocess.run(
            ["node", driver, folder / "in.json", DOCUMENTS, folder / "out.json"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        return json.loads((folder / "out.json").read_text())

    return run


def test_web_data_is_current() -> None:
    from mlcpatch.loop.web_assets import stale

    assert stale() == [], "run: python -m mlcpatch.loop.web_assets"


def test_questions_give_the_same_tool_lines(run_js) -> None:
    js = run_js([], QUESTIONS)["questions"]
    for question, got in zip(QUESTIONS, js, strict=True):
        want = python_question(question)
        assert "escape" not in want, question
        assert got == want, question
    # The set exercises both tools, hits and misses.
    assert any(any(line.startswith("search:") for line in r["value"]) for r in js)
    assert any(any(line.startswith("calculator:") for line in r["value"]) for r in js)
    assert any(r["value"] == [] for r in js)


def test_random_expressions_evaluate_alike(run_js) -> None:
    rng = random.Random(20261122)
    expressions = [random_expression(rng) for _ in range(4000)]
    expressions += [
        "6*7", "1000*1000", "1000.0*1000", "1234565", "0.5", "2.5e-5 * 1", "1e22 * 1.0",
        "1e16 + 1.0", "123456789012345678901234567890 / 7", "2**-1074 * 1.0", "7.0 // -2",
        "-7.0 % 2", "0.0 // -1", "round(0.5)", "round(-0.5)", "round(1.5)", "abs(-0.0)",
        "True + 1", "0x1f + 0b11", "1_000 * 2", "(1, 2)", "sqrt(4,)", "2 ** 3 ** 2",
        "-2 ** 2", "1 # comment", "(1 +\n 2)", "1 +\n 2", "00", "01", ".e5", "1.e5",
    ]  # fmt: skip
    got = run_js(expressions, [])["expressions"]
    values = 0
    pow_ulps = 0
    for expr, js in zip(expressions, got, strict=True):
        want = python_expression(expr)
        assert "escape" not in want, (expr, want)
        values += "value" in want
        if js != want and _pow_ulp_apart(expr, want, js):
            pow_ulps += 1
            continue
        assert js == want, (expr, want, js)
    assert values > 300  # the random set is not all syntax errors
    assert pow_ulps <= 3


def _pow_ulp_apart(expr: str, want: dict, js: dict) -> bool:
    """V8's Math.pow is not correctly rounded, glibc's pow (Python's) nearly is: a float power
    can differ in the last bit, which shows when the result is a whole number above 2**53."""
    if not any(op in expr for op in ("**", "^")) or "value" not in js or "value" not in want:
        return False
    a, b = float(want["value"]), float(js["value"])
    return abs(a - b) <= 4e-16 * abs(a) and abs(a) >= 2**53


def test_arithmetic_failures_are_calculator_errors_on_both_sides(run_js) -> None:
    got = run_js(ARITHMETIC_FAILURES, [])["expressions"]
    for expr, js in zip(ARITHMETIC_FAILURES, got, strict=True):
        assert python_expression(expr) == {"error": "CalculatorError"}, expr
        assert js == {"error": "CalculatorError"}, expr
    # A question made of them yields no calculator line, and does not crash the tool caller.
    question = "What are " + " and ".join(ARITHMETIC_FAILURES) + "?"
    assert not any(line.startswith("calculator:") for line in tools.calculator_tool(question))


def test_format_matches_python_on_ties_and_extremes(run_js) -> None:
    # Exact halfway cases (round half to even on the binary value), tiny and huge magnitudes.
    numbers = [1234565, 1234575, 0.000123456789, 1e-5, 123456.5, 999999.5, 1e300, 5e-324]
    numbers += [math.pi * 10**k for k in range(-8, 9)]
    expressions = [f"{n!r} * 1" if isinstance(n, float) else f"{n} * 1" for n in numbers]
    got = run_js(expressions, [])["expressions"]
    for expr, js in zip(expressions, got, strict=True):
        assert js == python_expression(expr), expr


# Inputs that used to freeze or crash a run (nested powers: seconds to forever, then a
# RangeError in JS; a run of "(": quadratic in the pattern): both calculators must bound them
# alike, so the same expressions are skipped and the same ones still computed.
HOSTILE_EXPRESSIONS = [
    "(9**9999)**999",
    "(9**9999)**9999",
    "((9^9999)^9999)^9999",
    "(2^9999)^9999",
    "9^9999 * 9^9999",
    "-(9^9999) * 9^9999",
    "16^10000",
    "16^10000 // 16^9999",
    "15^10000 // 15^9999",
    "(-15)^10000 // 15^9999",
    "9^9999 // 9^9998",
    "2^10000 // 2^9999",
    "(2^5000)^2 // 2^9999",
    "(2^5000)^8 // 2^39999",
    "(2^5000)^9 // 2^44999",
    "10^400 / 10^399",
    "(9^9999 - 9^9999) ^ 9999",
    "(9^9999 + 9^9999) // 9^9999",
    "round(1e308) ^ 39",
    "round(1e308) ^ 40",
    "1" + "+1" * 99,
    "1" + "+1" * 100,
    "(" * 100 + "1" + ")" * 100,
    "-" * 199 + "1",
    "2" + "**2" * 66,
]

HOSTILE_QUESTIONS = [
    "What is ((9^9999)^9999)^9999 or 6*7?",
    "Is it (9**9999)**999 or 9^9999 // 9^9998?",
    "(" * 20_000,
    "(" * 20_000 + "6*7",
    "(" * 9_000 + " and 6*7",
    "6*7 and " + "." * 9_000,
    "What is 6*7? " + "Padding. " * 1200,
    "What is 6*7? " + "(" * (tools.MAX_QUESTION_LENGTH - 13),
    # Astral characters: two UTF-16 units each in JS, one character in Python's len().
    "What is 6*7? " + "\U0001f600" * (tools.MAX_QUESTION_LENGTH - 13),
    "What is 6*7? " + "\U0001f600" * (tools.MAX_QUESTION_LENGTH - 12),
]


def test_hostile_inputs_are_bounded_alike(run_js) -> None:
    got = run_js(HOSTILE_EXPRESSIONS, HOSTILE_QUESTIONS)
    for expr, js in zip(HOSTILE_EXPRESSIONS, got["expressions"], strict=True):
        want = python_expression(expr)
        assert "escape" not in want, (expr, want)
        assert js == want, (expr, want, js)
    outcomes = [python_expression(e) for e in HOSTILE_EXPRESSIONS]
    assert {"value": "9"} in outcomes and {"error": "CalculatorError"} in outcomes
    for question, js in zip(HOSTILE_QUESTIONS, got["questions"], strict=True):
        want = python_question(question)
        assert "escape" not in want, question[:80]
        assert js == want, question[:80]
    calculator_lines = [
        [line for line in r["value"] if line.startswith("calculator:")] for r in got["questions"]
    ]
    assert calculator_lines[0] == ["calculator: 6*7 = 42"]
    assert calculator_lines[2] == calculator_lines[6] == calculator_lines[9] == []
    assert calculator_lines[7] == calculator_lines[8] == ["calculator: 6*7 = 42"]


def test_random_questions_find_the_same_expressions(run_js) -> None:
    # The expression pattern with its run-swallowing branch, over the characters it cares about.
    rng = random.Random(20260101)
    chars = list("0123456789((()))..  +-*/%^x×÷ab") + ["sqrt(", "round(", "١", "\u2003", "\n"]
    glue = [" is ", " and ", ". ", "? ", " (", ") ", ", ", "a"]
    questions = ["".join(rng.choice(chars) for _ in range(rng.randint(0, 40))) for _ in range(1000)]
    questions += [
        "".join(random_expression(rng) + rng.choice(glue) for _ in range(rng.randint(1, 5)))
        for _ in range(1000)
    ]
    got = run_js([], questions)["questions"]
    lines = 0
    for question, js in zip(questions, got, strict=True):
        want = python_question(question)
        assert "escape" not in want, question
        assert js == want, question
        lines += sum(line.startswith("calculator:") for line in want["value"])
    assert lines > 300
