"""Local tools for the Deliberation pattern: a safe calculator and a search over bundled notes.

Nothing here touches the network or evaluates arbitrary code. The tool caller's inputs are taken
from the question itself (every arithmetic expression in it, and the question as the query), so the
tools run the same way in latent and text mode and never need generated tokens.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
from dataclasses import dataclass
from importlib import resources

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS = {"sqrt": math.sqrt, "abs": abs, "round": round}
# An expression is group 1. The second branch swallows the rest of a run of calculator
# characters in which group 1 cannot end (no digit or ")" follows): without it, each "(" of
# "((((...(" would rescan the whole run, quadratic in its length (20,000 "(" took 2.7 s).
# The matches in group 1 are exactly those of the pattern alone; web/src/tools.js has the same.
_EXPR_CHARS = r"[\d\s.+\-*/%()^x×÷]"
_EXPR_RE = re.compile(rf"((?:sqrt\()?[\d.(]{_EXPR_CHARS}*[\d)])|[\d.(]{_EXPR_CHARS}*")
# Bounds on the work one question can cost; the calculator's input is the user's question, so
# a hostile one must be skipped, not freeze or kill the run. web/src/tools.js uses the same
# numbers and makes the same decisions, so both calculators skip the same expressions.
MAX_QUESTION_LENGTH = 10_000  # characters; a longer question gets no calculator lines at all
MAX_LENGTH = 200  # characters of one expression (after ^ -> **)
MAX_POWER = 10_000  # |exponent| of any power
# Bits of any int result, checked against an upper bound *before* computing it: nesting
# powers under MAX_POWER alone, (9**9999)**9999, would need 10**8 bits and never finish.
# 40,000 keeps every power of a one-digit base up to MAX_POWER (4 bits x 10,000); an int
# beyond about 1,024 bits cannot be shown anyway (it must be divided back down first).
MAX_BITS = 40_000


class CalculatorError(ValueError):
    """An expression the calculator refuses. Not a user error: the loop hands the message to the
    model as the tool's result, and question sets use it to skip answers it cannot check."""


def _int_result_bits(op: ast.operator, left: int, right: int) -> int:
    """An upper bound on the bit length of `left op right` for ints, known without computing it.

    //, % and / never give a larger int than their operands (/ gives a float), nor does a
    negative power (a float); the operators that grow an int are bounded here.
    """
    a, b = left.bit_length(), right.bit_length()
    if isinstance(op, ast.Pow):
        return a * right if right > 0 else 0
    if isinstance(op, ast.Mult):
        return a + b
    if isinstance(op, ast.Add | ast.Sub):
        return max(a, b) + 1
    return 0


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_POWER:
            raise CalculatorError("exponent too large")
        if isinstance(left, int) and isinstance(right, int):
            if _int_result_bits(node.op, left, right) > MAX_BITS:
                raise CalculatorError("result too large")
        try:
            return _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCS
        and len(node.args) == 1
        and not node.keywords
    ):
        return _FUNCS[node.func.id](_eval(node.args[0]))
    raise CalculatorError(f"not allowed in a calculation: {ast.unparse(node)}")


def calculate(expression: str) -> float:
    """Evaluate arithmetic (+ - * / // % ** ^, sqrt, abs, round) without eval()."""
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/")
    text = re.sub(r"(?<=\d)\s*x\s*(?=\d)", "*", text)
    if len(text) > MAX_LENGTH:
        raise CalculatorError("expression too long")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, MemoryError, RecursionError):  # the last two: nesting too deep
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    # Tool inputs come from the user's question: anything arithmetic rejects (sqrt(-1), a
    # float overflow, round(inf)), and running out of memory or stack, must skip the
    # expression, not crash the run.
    try:
        value = _eval(tree)
    except (ArithmeticError, ValueError, TypeError, MemoryError, RecursionError) as err:
        raise CalculatorError(f"cannot evaluate {expression!r}: {err}") from None
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError(f"{expression!r} has no real value")
    return value


def _format_number(value: float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    try:
        return f"{value:.6g}"
    except OverflowError:  # an int beyond float range (2**4179) has no 6-digit form
        raise CalculatorError("result too large to show") from None


def calculator_tool(question: str) -> list[str]:
    """Evaluate every arithmetic expression found in the question."""
    if len(question) > MAX_QUESTION_LENGTH:
        return []
    results = []
    for match in _EXPR_RE.finditer(question):
        if match.group(1) is None:  # the rest of a run that holds no expression
            continue
        expr = match.group(1).strip()
        if not re.search(r"[+\-*/%^x×÷]|sqrt", expr) or re.fullmatch(r"[\d.]+", expr):
            continue
        try:
            results.append(f"calculator: {expr} = {_format_number(calculate(expr))}")
        except CalculatorError:
            continue
    return results


@dataclass(frozen=True)
class Document:
    title: str
    text: str


def load_documents() -> list[Document]:
    raw = (resources.files("mlcpatch.loop") / "data" / "documents.json").read_text("utf-8")
    return [Document(d["title"], d["text"]) for d in json.loads(raw)]


# Words too common to say what a question is about.
_STOP_WORDS = set(
    "a an and are as at be by do does for from how i in is it its of on or the to was what when "
    "where which who why will with".split()
)


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP_WORDS]


def search(query: str, documents: list[Document], top_k: int = 1) -> list[Document]:
    """Rank documents by summed inverse document frequency of the query words they contain."""
    query_words = set(_words(query))
    doc_words = [set(_words(d.title + " " + d.text)) for d in documents]
    scores = []
    for index, words in enumerate(doc_words):
        score = 0.0
        for word in query_words & words:
            frequency = sum(word in w for w in doc_words)
            score += math.log((1 + len(documents)) / frequency)
        scores.append((score, -index))
    ranked = sorted(range(len(documents)), key=lambda i: scores[i], reverse=True)
    return [documents[i] for i in ranked[:top_k] if scores[i][0] > 0]


def search_tool(question: str) -> list[str]:
    return [f"search: {d.title}: {d.text}" for d in search(question, load_documents())]


TOOLS = {"calculator": calculator_tool, "search": search_tool}


def run_tools(names: tuple[str, ...], question: str) -> list[str]:
    """Results of each named tool, as lines of text (empty when a tool finds nothing)."""
    lines: list[str] = []
    for name in names:
        lines.extend(TOOLS[name](question))
    return lines
