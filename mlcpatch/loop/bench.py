"""`mlcpatch bench`: latent against text on a fixed question set, for R = 1, 2, 3.

Both modes run the same agents, prompts and questions on the same machine, one after the other,
so the ratios are comparable; absolute seconds depend on the machine. With a batch size above 1,
each mode takes that many questions at once (`run_batch`); prefix reuse follows the settings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from mlcpatch.loop.orchestrator import Agent, Links, Settings, run_batch
from mlcpatch.loop.patterns import Pattern


def bench_questions() -> list[str]:
    text = (resources.files("mlcpatch.loop") / "data" / "bench_questions.jsonl").read_text("utf-8")
    return [json.loads(line)["question"] for line in text.splitlines() if line.strip()]


@dataclass
class ModeTotals:
    seconds: float = 0.0
    tokens_generated: int = 0
    positions_processed: int = 0


def bench(
    pattern: Pattern,
    agents: list[Agent],
    links: Links,
    questions: list[str],
    rounds: list[int],
    base: Settings,
    batch: int = 1,
) -> list[dict]:
    rows = []
    for r in rounds:
        settings = replace(base, rounds=r)
        totals = {"latent": ModeTotals(), "text": ModeTotals()}
        for start in range(0, len(questions), batch):
            group = questions[start : start + batch]
            for mode in ("text", "latent"):
                chosen = links if mode == "latent" else None
                for result in run_batch(mode, pattern, agents, group, settings, chosen):
                    total = totals[mode]
                    total.seconds += result.seconds  # a share of its batch's time
                    total.tokens_generated += result.tokens_generated
                    total.positions_processed += result.total("positions_processed")
        latent, text = totals["latent"], totals["text"]
        rows.append(
            {
                "rounds": r,
                "speedup": text.seconds / latent.seconds,
                "token_reduction": 1 - latent.tokens_generated / max(text.tokens_generated, 1),
                "questions_per_second": {
                    "latent": len(questions) / latent.seconds,
                    "text": len(questions) / text.seconds,
                },
                "latent": vars(latent),
                "text": vars(text),
            }
        )
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rounds = [row["rounds"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    width = 0.38
    left.bar(
        [r - width / 2 for r in rounds],
        [row["text"]["tokens_generated"] for row in rows],
        width,
        label="text",
    )
    left.bar(
        [r + width / 2 for r in rounds],
        [row["latent"]["tokens_generated"] for row in rows],
        width,
        label="latent",
    )
    left.set(xlabel="rounds R", ylabel="tokens generated", xticks=rounds)
    left.legend()
    right.plot(rounds, [row["speedup"] for row in rows], marker="o")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set(xlabel="rounds R", ylabel="speedup (text s / latent s)", xticks=rounds)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
