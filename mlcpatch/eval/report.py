"""Summaries of an eval run: accuracy with a 95% interval, tokens, seconds, and ratios.

Accuracy intervals are Wilson score intervals (sound at 0% and 100%, unlike mean ± 1.96·se).
Comparisons between modes are paired: they use only questions both modes answered, and the
difference in accuracy gets its own interval from the per-question differences.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

Z95 = 1.959963984540054


def wilson(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    if total == 0:
        return (0.0, 0.0)
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: list[bool], b: list[bool], z: float = Z95) -> tuple[float, float, float]:
    """Mean of a − b over paired questions, with a normal-approximation 95% interval."""
    n = len(a)
    if n == 0:
        return (0.0, 0.0, 0.0)
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = z * math.sqrt(var / n)
    return (mean, mean - half, mean + half)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def summarize(rows: list[dict[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    by_mode: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in modes}
    for row in rows:
        if row["mode"] in by_mode:
            by_mode[row["mode"]][row["id"]] = row
    summary = []
    for mode in modes:
        mine = by_mode[mode]
        correct = sum(bool(r["correct"]) for r in mine.values())
        low, high = wilson(correct, len(mine))
        entry: dict[str, Any] = {
            "mode": mode,
            "questions": len(mine),
            "correct": correct,
            "accuracy": correct / len(mine) if mine else 0.0,
            "ci95": [low, high],
            "mean_tokens": _mean([r["tokens_generated"] for r in mine.values()]),
            "mean_positions": _mean([r["positions_processed"] for r in mine.values()]),
            "mean_seconds": _mean([r["seconds"] for r in mine.values()]),
        }
        for other, key in (("text", "vs_text"), ("single", "vs_single")):
            theirs = by_mode.get(other)
            if not theirs or other == mode:
                continue
            shared = sorted(set(mine) & set(theirs))
            if not shared:
                continue
            my_s = sum(mine[i]["seconds"] for i in shared)
            their_s = sum(theirs[i]["seconds"] for i in shared)
            my_t = sum(mine[i]["tokens_generated"] for i in shared)
            their_t = sum(theirs[i]["tokens_generated"] for i in shared)
            diff = paired_difference(
                [bool(mine[i]["correct"]) for i in shared],
                [bool(theirs[i]["correct"]) for i in shared],
            )
            entry[key] = {
                "questions": len(shared),
                "speedup": their_s / my_s if my_s else math.inf,  # their seconds / mine
                "cost": my_s / their_s if their_s else math.inf,  # my seconds / theirs
                "token_reduction": 1 - my_t / their_t if their_t else 0.0,
                "accuracy_difference": diff[0],
                "difference_ci95": [diff[1], diff[2]],
            }
        summary.append(entry)
    return summary


def table(summary: list[dict[str, Any]]) -> str:
    head = (
        f"{'mode':<24} {'n':>4} {'accuracy':>9} {'95% CI':>15} {'tokens':>7} "
        f"{'seconds':>8} {'vs text':>8} {'vs single':>9} {'Δacc vs text':>22}"
    )
    lines = [head, "-" * len(head)]
    for e in summary:
        vs_text = e.get("vs_text")
        vs_single = e.get("vs_single")
        speed = f"{vs_text['speedup']:.2f}x" if vs_text else "-"
        cost = f"{vs_single['cost']:.2f}x" if vs_single else "-"
        delta = (
            f"{vs_text['accuracy_difference']:+.1%} "
            f"[{vs_text['difference_ci95'][0]:+.1%},{vs_text['difference_ci95'][1]:+.1%}]"
            if vs_text
            else "-"
        )
        interval = f"[{e['ci95'][0]:.1%}, {e['ci95'][1]:.1%}]"
        lines.append(
            f"{e['mode']:<24} {e['questions']:>4} {e['accuracy']:>9.1%} {interval:>15} "
            f"{e['mean_tokens']:>7.1f} {e['mean_seconds']:>8.2f} {speed:>8} {cost:>9} {delta:>22}"
        )
    return "\n".join(lines)


def chart(summary: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [e["mode"] for e in summary]
    x = range(len(summary))
    acc = [e["accuracy"] * 100 for e in summary]
    errors = [
        [max(0.0, a - e["ci95"][0] * 100) for a, e in zip(acc, summary, strict=True)],
        [max(0.0, e["ci95"][1] * 100 - a) for a, e in zip(acc, summary, strict=True)],
    ]
    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(12, 3.8))
    left.bar(x, acc, yerr=errors, capsize=4, color="#4878a8")
    left.set(ylabel="accuracy % (95% CI)", ylim=(0, 100))
    mid.bar(x, [e["mean_seconds"] for e in summary], color="#d08a3c")
    mid.set(ylabel="seconds per question")
    right.bar(x, [e["mean_tokens"] for e in summary], color="#6a9a58")
    right.set(ylabel="tokens generated per question")
    for axis in (left, mid, right):
        axis.set_xticks(list(x), labels, rotation=20, ha="right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(path)
