"""A stand-in for MLC-LLM's `mlc_llm` command (standard library only).

Installed by tests/fakes/mlc.py as ``mlc_llm/__main__.py`` of a fake MLC-LLM package, it parses
``convert_weight``, ``gen_config`` and ``compile`` with the flags those commands have in every
MLC-LLM version from 0.17.1 to main (an unknown flag exits 2, as argparse does in MLC-LLM), and
writes the files MLC-LLM writes: params_shard_*.bin + tensor-cache.json (ndarray-cache.json
before 0.20), mlc-chat-config.json + tokenizer files, and the library.

Each call appends one JSON line to $FAKE_MLC_LOG: its argv and whether the model file it would
import (``model/<type>/<type>_model.py`` of this package) had the patch at that moment.
$FAKE_MLC_FAIL=<subcommand> makes that subcommand print some output and fail with exit code 1;
$FAKE_MLC_HANG=<subcommand> makes it sleep two minutes (for tests that terminate mlcpatch);
$FAKE_MLC_EDIT_MODEL=<subcommand> makes it append a comment to that model file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
TOKENIZER_FILES = [
    "tokenizer.model",
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "tokenizer_config.json",
]
MODEL_TYPES = ["qwen2", "llama"]
QUANTIZATIONS = ["q0f16", "q0f32", "q4f16_1", "q4f32_1"]


def _version() -> tuple[int, ...]:
    """The MLC-LLM version this fake plays (written by tests/fakes/mlc.py)."""
    number = (PACKAGE / "fake_version.txt").read_text().strip()
    return tuple(int(p) for p in number.split(".")[:3])


def _model_dir(value: str) -> Path:
    path = Path(value)
    config = path / "config.json" if path.is_dir() else path
    if not config.is_file():
        raise argparse.ArgumentTypeError(f"Cannot find config.json: {value}")
    return config


def _chat_config(value: str) -> Path:
    path = Path(value)
    path = path / "mlc-chat-config.json" if path.is_dir() else path
    if path.name != "mlc-chat-config.json" or not path.is_file():
        raise argparse.ArgumentTypeError(f"Cannot find mlc-chat-config.json: {value}")
    return path


def _out_dir(value: str) -> Path:
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _out_file(value: str) -> Path:
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"Output cannot be a directory: {path}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"Directory does not exist: {path.parent}")
    return path


def _log(argv: list[str], model_type: str) -> None:
    model_file = PACKAGE / "model" / model_type / f"{model_type}_model.py"
    entry = {
        "argv": argv,
        "executable": sys.argv[0],
        "model_file_patched": "def get_last_hidden(" in model_file.read_text(),
    }
    with open(os.environ["FAKE_MLC_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")
    if os.environ.get("FAKE_MLC_EDIT_MODEL") == argv[0]:
        with open(model_file, "a", encoding="utf-8") as edit:
            edit.write("# edited while mlc_llm ran\n")


def _maybe_fail(command: str) -> None:
    print(f"[fake mlc_llm] {command}: working", flush=True)
    if os.environ.get("FAKE_MLC_HANG") == command:
        time.sleep(120)
    if os.environ.get("FAKE_MLC_FAIL") == command:
        print("Traceback (most recent call last):", file=sys.stderr)
        print('  File "mlc_llm/cli/x.py", line 1, in main', file=sys.stderr)
        print(f"ValueError: fake {command} failure", file=sys.stderr)
        sys.exit(1)


def _model_type(parsed: argparse.Namespace, config: dict) -> str:
    return config["model_type"] if parsed.model_type == "auto" else parsed.model_type


def convert_weight(argv: list[str]) -> None:
    parser = argparse.ArgumentParser("MLC AutoLLM Quantization Framework")
    parser.add_argument("config", type=_model_dir)
    parser.add_argument("--quantization", required=True, choices=QUANTIZATIONS)
    parser.add_argument("--model-type", default="auto", choices=["auto", *MODEL_TYPES])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--source", default="auto")
    parser.add_argument("--source-format", default="auto")
    parser.add_argument("--output", "-o", type=_out_dir, required=True)
    parsed = parser.parse_args(argv)
    config = json.loads(parsed.config.read_text())
    _log(["convert_weight", *argv], _model_type(parsed, config))
    _maybe_fail("convert_weight")
    names = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
    records = []
    for index, name in enumerate(names):
        data = bytes([index + 1]) * 64
        (parsed.output / f"params_shard_{index}.bin").write_bytes(data)
        records.append(
            {
                "dataPath": f"params_shard_{index}.bin",
                "format": "raw-shard",
                "nbytes": len(data),
                "records": [
                    {
                        "name": name,
                        "shape": [16],
                        "dtype": "float32",
                        "format": "f32-to-bf16",
                        "nbytes": len(data),
                        "byteOffset": 0,
                    }
                ],
            }
        )
        print(f"[fake mlc_llm] Param: {name}", flush=True)
    cache = "tensor-cache.json" if _version() >= (0, 20) else "ndarray-cache.json"
    metadata = {"ParamSize": len(names), "ParamBytes": 64 * len(names), "BitsPerParam": 32.0}
    (parsed.output / cache).write_text(json.dumps({"metadata": metadata, "records": records}))


def gen_config(argv: list[str]) -> None:
    parser = argparse.ArgumentParser("MLC LLM Configuration Generator")
    parser.add_argument("config", type=_model_dir)
    parser.add_argument("--quantization", required=True, choices=QUANTIZATIONS)
    parser.add_argument("--model-type", default="auto", choices=["auto", *MODEL_TYPES])
    parser.add_argument("--conv-template", required=True, choices=["chatml", "qwen2", "llama-3"])
    parser.add_argument("--context-window-size", type=int, default=None)
    parser.add_argument("--sliding-window-size", type=int, default=None)
    parser.add_argument("--prefill-chunk-size", type=int, default=None)
    parser.add_argument("--attention-sink-size", type=int, default=None)
    parser.add_argument("--tensor-parallel-shards", type=int, default=None)
    parser.add_argument("--pipeline-parallel-stages", type=int, default=None)
    parser.add_argument("--max-batch-size", type=int, default=80)
    parser.add_argument("--output", "-o", type=_out_dir, required=True)
    parsed = parser.parse_args(argv)
    config = json.loads(parsed.config.read_text())
    model_type = _model_type(parsed, config)
    _log(["gen_config", *argv], model_type)
    _maybe_fail("gen_config")
    context = parsed.context_window_size or config.get("max_position_embeddings", 2048)
    prefill = parsed.prefill_chunk_size or min(context, 2048)
    model_config = {**config, "context_window_size": context, "prefill_chunk_size": prefill}
    copied = []
    for name in TOKENIZER_FILES:
        if (parsed.config.parent / name).is_file():
            shutil.copy(parsed.config.parent / name, parsed.output / name)
            copied.append(name)
    chat = {
        "version": "0.1.0",
        "model_type": model_type,
        "quantization": parsed.quantization,
        "model_config": model_config,
        "vocab_size": config["vocab_size"],
        "context_window_size": context,
        "sliding_window_size": -1,
        "prefill_chunk_size": prefill,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "conv_template": {"name": parsed.conv_template, "system_template": "{system_message}"},
        "tokenizer_files": copied,
        "tokenizer_info": {"token_postproc_method": "byte_level"},
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (parsed.output / "mlc-chat-config.json").write_text(json.dumps(chat, indent=2))


def compile_(argv: list[str]) -> None:
    parser = argparse.ArgumentParser("mlc_llm compile")
    parser.add_argument("model", type=_chat_config)
    parser.add_argument("--quantization", choices=QUANTIZATIONS)
    parser.add_argument("--model-type", default="auto", choices=["auto", *MODEL_TYPES])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--host", default="auto")
    parser.add_argument("--opt", default="O2")
    parser.add_argument("--system-lib-prefix", default="auto")
    parser.add_argument("--output", "-o", type=_out_file, required=True)
    parser.add_argument("--overrides", default="")
    parser.add_argument("--debug-dump", default=None)
    parsed = parser.parse_args(argv)
    chat = json.loads(parsed.model.read_text())
    _log(["compile", *argv], _model_type(parsed, chat))
    _maybe_fail("compile")
    if parsed.device not in ("llvm", "webgpu", "cpu", "cuda", "metal", "vulkan"):
        raise SystemExit(f"ValueError: Invalid target: {parsed.device}")
    if parsed.device == "webgpu":
        if parsed.output.suffix != ".wasm":
            raise SystemExit("AssertionError: webgpu output must be .wasm")
        parsed.output.write_bytes(b"\0asm\1\0\0\0" + b"fake webgpu library")
    else:
        parsed.output.write_bytes(b"\x7fELF" + f"fake {parsed.device} library".encode())
    print(f"[fake mlc_llm] Generated: {parsed.output}", flush=True)


def main() -> None:
    commands = {"convert_weight": convert_weight, "gen_config": gen_config, "compile": compile_}
    parser = argparse.ArgumentParser("MLC LLM Command Line Interface.")
    parser.add_argument("subcommand", choices=[*commands, "chat", "serve", "package"])
    parsed = parser.parse_args(sys.argv[1:2])
    if parsed.subcommand not in commands:
        raise SystemExit(f"fake mlc_llm: {parsed.subcommand} is not faked")
    commands[parsed.subcommand](sys.argv[2:])


if __name__ == "__main__":
    main()
