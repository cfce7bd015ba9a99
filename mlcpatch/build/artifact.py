"""Writing the artifact folder: chat config, tokenizer files, and its atomic placement (its
contract and manifest: ``mlcpatch.artifact``)."""

from __future__ import annotations

import contextlib
import os
import pathlib
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from mlcpatch.build.errors import BuildError
from mlcpatch.build.source import SourceError
from mlcpatch.build.staging import staging_prefix, sweep_stale
from mlcpatch.errors import MlcpatchError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)


class OutputExistsError(MlcpatchError, FileExistsError):
    def __str__(self) -> str:
        return f"{self.args[0]} already exists; pass --overwrite to replace it"


def copy_tokenizer(source: pathlib.Path, dest: pathlib.Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise SourceError(f"{source}: no tokenizer files (tokenizer.json, ...)")
    return copied


def _token_ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def chat_config(
    *,
    model_type: str,
    arch: str,
    quantization: str,
    model_config: dict[str, Any],
    hf_config: dict[str, Any],
    conv_template: str,
    tokenizer_files: list[str],
    libraries: dict[str, str],
    generation_config: dict[str, Any] | None,
) -> dict[str, Any]:
    """mlc-chat-config.json in MLC-LLM's layout, plus the libraries this folder holds."""
    generation = generation_config or {}
    eos = _token_ids(generation.get("eos_token_id", hf_config.get("eos_token_id")))
    return {
        "version": "0.1.0",
        "model_type": model_type,
        "arch": arch,
        "quantization": quantization,
        "model_config": model_config,
        "vocab_size": model_config["vocab_size"],
        "hidden_size": model_config["hidden_size"],
        "context_window_size": model_config["context_window_size"],
        "prefill_chunk_size": model_config["prefill_chunk_size"],
        "sliding_window_size": -1,
        "attention_sink_size": -1,
        "tensor_parallel_shards": 1,
        "conv_template": conv_template,
        "tokenizer_files": tokenizer_files,
        "bos_token_id": hf_config.get("bos_token_id"),
        "eos_token_id": eos,
        "pad_token_id": hf_config.get("pad_token_id"),
        "temperature": generation.get("temperature", 1.0),
        "top_p": generation.get("top_p", 1.0),
        "model_lib": libraries,
    }


def tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("recursivemas-webgpu", "apache-tvm", "transformers", "numpy", "torch"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def staging_dir(out: pathlib.Path, overwrite: bool) -> Iterator[pathlib.Path]:
    """A temp folder next to ``out`` that replaces it only if the block finishes.

    On any error the temp folder is removed and ``out`` is left exactly as it was.
    """
    if out.exists() and not overwrite:
        raise OutputExistsError(str(out))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # What killed builds of this output left behind (their process is gone).
        sweep_stale(out.parent, re.escape(out.name) + r"\.(?:building|old)")
        tmp = pathlib.Path(
            tempfile.mkdtemp(prefix=staging_prefix(f"{out.name}.building"), dir=out.parent)
        )
    except OSError as err:
        raise BuildError(f"{out.parent}: cannot build there ({err.strerror or err})") from err
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the artifact private
        if out.exists():
            if not overwrite:  # appeared while we were building
                raise OutputExistsError(str(out))
            old = pathlib.Path(
                tempfile.mkdtemp(prefix=staging_prefix(f"{out.name}.old"), dir=out.parent)
            )
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
