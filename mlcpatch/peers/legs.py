"""The engine legs that run in the project's own environment: ours and transformers.

``python -m mlcpatch.peers.legs ours|transformers --model DIR --prompt-ids 1,2,3 ...`` prints
one JSON line (see :mod:`mlcpatch.peers.protocol`). Thread counts come from the environment the
parent sets (``TVM_NUM_THREADS``, ``OMP_NUM_THREADS``) and ``--threads`` for torch.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import numpy as np

from mlcpatch.peers.protocol import current_rss_mib, measure, peak_rss_mib


def run_ours(folder: pathlib.Path, prompt_ids: list[int], tokens: int, repeats: int) -> dict:
    from mlcpatch.artifact import verify_artifact
    from mlcpatch.runtime import Runtime

    base = current_rss_mib()
    # Loading as the peers do (no hash check); the sha256 check of every file that
    # `mlcpatch run` adds is timed on its own.
    start = time.perf_counter()
    rt = Runtime(folder, verify=False)
    load = time.perf_counter() - start
    start = time.perf_counter()
    verify_artifact(rt.folder, rt.manifest)
    verify = time.perf_counter() - start
    weight_bytes = sum(int(p.numpy().nbytes) for p in rt._params)

    def prefill(ids: list[int]) -> int:
        rt.reset()
        return int(np.argmax(rt.prefill(rt.embed(ids))))

    def decode(token: int) -> int:
        return int(np.argmax(rt.decode(rt.embed([token]))))

    figures = measure(prefill, decode, prompt_ids, tokens, repeats)
    quant = rt.config.get("quantization", "?")
    return {
        "engine": f"ours ({quant})",
        "load_s": load,
        "verify_s": verify,
        "base_rss_mib": base,
        "weight_bytes": weight_bytes,
        **figures,
    }


def run_transformers(
    folder: pathlib.Path, prompt_ids: list[int], tokens: int, repeats: int, threads: int
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    base = current_rss_mib()
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    load = time.perf_counter() - start
    # parameters() yields a tied embedding/head once: the bytes a forward pass reads.
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state: dict[str, Any] = {}

    @torch.inference_mode()
    def prefill(ids: list[int]) -> int:
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
        state["past"] = out.past_key_values
        return int(out.logits[0, -1].argmax())

    @torch.inference_mode()
    def decode(token: int) -> int:
        out = model(
            input_ids=torch.tensor([[token]]), past_key_values=state["past"], use_cache=True
        )
        state["past"] = out.past_key_values
        return int(out.logits[0, -1].argmax())

    figures = measure(prefill, decode, prompt_ids, tokens, repeats)
    return {
        "engine": "transformers (f32, eager)",
        "load_s": load,
        "base_rss_mib": base,
        "weight_bytes": weight_bytes,
        "attention": getattr(model.config, "_attn_implementation", None),
        "torch": torch.__version__,
        **figures,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlcpatch.peers.legs")
    parser.add_argument("engine", choices=["ours", "transformers"])
    parser.add_argument("--model", type=pathlib.Path, required=True)
    parser.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args(argv)
    ids = [int(t) for t in args.prompt_ids.split(",")]
    if args.engine == "ours":
        result = run_ours(args.model, ids, args.decode_tokens, args.repeats)
    else:
        result = run_transformers(args.model, ids, args.decode_tokens, args.repeats, args.threads)
    result["threads"] = args.threads
    result["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
