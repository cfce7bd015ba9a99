"""What every engine leg measures and reports, the same way for each engine.

A leg runs in its own process (so its peak RSS is its own) and prints one JSON object as its last
line of stdout. ``llama_leg.py`` runs in the llama.cpp environment, without mlcpatch installed, so
it repeats the few lines below instead of importing them; keep the two in step.

- ``load_s``: constructing the engine from files on disk (imports not included);
- ``prefill_tok_s``: prompt tokens / median time of ``repeats`` prefills, each on a fresh sequence;
- ``decode_tok_s``: 1 / median time of one greedy decode step (``decode_tokens`` steps after the
  prompt), so a slow step caused by another process on the machine weighs little;
- ``peak_rss_mib``: the process's peak resident memory (``VmHWM``), ``base_rss_mib`` the RSS
  just before loading (interpreter and libraries: torch alone is several hundred MiB);
- ``weight_bytes``: bytes of weights the engine holds, which a decode step reads once;
- ``output_ids``: the greedy tokens, so the legs can be compared for agreement.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

LEG_FIELDS = (
    "engine",
    "threads",
    "load_s",
    "prompt_tokens",
    "prefill_tok_s",
    "decode_tokens",
    "decode_tok_s",
    "peak_rss_mib",
    "base_rss_mib",
    "weight_bytes",
    "output_ids",
)


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def current_rss_mib() -> float:
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """This process image's peak RSS (VmHWM). Not ``ru_maxrss``: Linux carries that across
    exec, so a leg would report the benchmark's own peak whenever it was the larger."""
    return _status_mib("VmHWM")


def measure(
    prefill: Callable[[list[int]], int],
    decode: Callable[[int], int],
    prompt_ids: list[int],
    decode_tokens: int,
    repeats: int,
) -> dict[str, Any]:
    """Time ``prefill`` (fresh sequence -> first greedy token) and ``decode`` (token -> next)."""
    prefills = []
    first = 0
    for _ in range(repeats):
        start = time.perf_counter()
        first = prefill(prompt_ids)
        prefills.append(time.perf_counter() - start)
    output = [first]
    steps = []
    for _ in range(decode_tokens):
        start = time.perf_counter()
        output.append(decode(output[-1]))
        steps.append(time.perf_counter() - start)
    return {
        "prompt_tokens": len(prompt_ids),
        "prefill_tok_s": len(prompt_ids) / statistics.median(prefills),
        "decode_tokens": decode_tokens,
        "decode_tok_s": 1.0 / statistics.median(steps) if steps else 0.0,
        "output_ids": output,
    }
