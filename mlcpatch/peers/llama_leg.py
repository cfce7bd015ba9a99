"""The llama.cpp leg: run by the benchmark's own environment's Python (see llama_env.py).

That environment has llama-cpp-python and numpy but not mlcpatch, so this file imports nothing
from the project; it repeats the measurement of ``mlcpatch.peers.protocol.measure`` (keep the
two in step). Usage: ``python llama_leg.py --model FILE.gguf --prompt-ids 1,2,3 --threads N``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def _rss_mib(field: str = "VmRSS") -> float:
    # VmHWM for the peak, not ru_maxrss, which Linux carries across exec from the parent.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompt-ids", required=True)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    ids = [int(t) for t in args.prompt_ids.split(",")]

    import llama_cpp
    import numpy as np

    base = _rss_mib()
    start = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=args.model,
        n_ctx=max(512, len(ids) + args.decode_tokens + 8),
        n_batch=max(512, len(ids)),
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=0,
        logits_all=False,
        verbose=False,
    )
    load = time.perf_counter() - start

    n_vocab = llm.n_vocab()

    def last_argmax() -> int:
        # Without logits_all, Llama.eval keeps no scores: read the last position's logits from
        # the context (the argmax is what llama.cpp's greedy sampler picks too).
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(n_vocab,))))

    prefills = []
    first = 0
    for _ in range(args.repeats):
        llm.reset()  # eval() drops the KV cache past n_tokens, so this starts a fresh sequence
        t0 = time.perf_counter()
        llm.eval(ids)
        first = last_argmax()
        prefills.append(time.perf_counter() - t0)
    output = [first]
    steps = []
    for _ in range(args.decode_tokens):
        t0 = time.perf_counter()
        llm.eval([output[-1]])
        output.append(last_argmax())
        steps.append(time.perf_counter() - t0)
    try:
        weight_bytes = int(llama_cpp.llama_model_size(llm.model))
    except (AttributeError, TypeError):
        weight_bytes = os.path.getsize(args.model)
    print(
        json.dumps(
            {
                "engine": "llama.cpp (GGUF)",
                "llama_cpp_python": llama_cpp.__version__,
                "threads": args.threads,
                "load_s": load,
                "base_rss_mib": base,
                "weight_bytes": weight_bytes,
                "prompt_tokens": len(ids),
                "prefill_tok_s": len(ids) / statistics.median(prefills),
                "decode_tokens": args.decode_tokens,
                "decode_tok_s": 1.0 / statistics.median(steps) if steps else 0.0,
                "output_ids": output,
                "peak_rss_mib": _rss_mib("VmHWM"),
            }
        )
    )


if __name__ == "__main__":
    main()
