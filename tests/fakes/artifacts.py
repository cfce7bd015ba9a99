"""A small artifact folder written by hand in the build's format (mlcpatch/build/artifact.py
write_manifest): a few files, and a manifest listing each with its size and sha256."""

from __future__ import annotations

import hashlib
import json
import pathlib
import random
import struct

NAME = "tiny-qwen2-q0f32"


def _payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def write_manifest(folder: pathlib.Path) -> None:
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != "manifest.json":
            data = path.read_bytes()
            files[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "format": 1,
        "name": NAME,
        "created_unix": 1767225600,
        "tools": {"python": "3.11.7", "apache-tvm": "0.27.0.post1", "recursivemas-webgpu": "0.1.0"},
        "source": {"spec": "Qwen/Qwen2.5-0.5B-Instruct", "kind": "hub", "files_sha256": {}},
        "patch": {
            "patched": True,
            "patcher_version": "0.1.0",
            "functions_added": ["get_last_hidden", "decode_last_hidden"],
        },
        "options": {
            "arch": "qwen2",
            "quantization": "q0f32",
            "targets": ["llvm", "webgpu"],
            "context_window_size": 128,
            "prefill_chunk_size": 32,
            "conv_template": "qwen2",
        },
        "libraries": {"llvm": f"{NAME}-cpu.so", "webgpu": f"{NAME}-webgpu.wasm"},
        "param_names": ["model.embed_tokens.weight"],
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def make_artifact(folder: pathlib.Path) -> pathlib.Path:
    folder.mkdir(parents=True)
    (folder / "mlc-chat-config.json").write_text(json.dumps({"model_type": "qwen2"}) + "\n")
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}}) + "\n")
    (folder / "tensor-cache.json").write_text(json.dumps({"records": []}) + "\n")
    (folder / "params_shard_0.bin").write_bytes(_payload(0, 96 * 1024))
    (folder / "params_shard_1.bin").write_bytes(_payload(1, 40 * 1024 + 3))
    (folder / f"{NAME}-cpu.so").write_bytes(b"\x7fELF" + _payload(2, 20 * 1024))
    (folder / f"{NAME}-webgpu.wasm").write_bytes(b"\0asm\1\0\0\0" + _payload(3, 30 * 1024))
    (folder / "source").mkdir()
    (folder / "source" / "qwen2_model.py").write_text("class QWen2LMHeadModel:\n    pass\n")
    write_manifest(folder)
    return folder


def write_links(folder: pathlib.Path) -> list[pathlib.Path]:
    """links.safetensors (one f32 tensor) + links.json, in the DESIGN.md link-file format."""
    folder.mkdir(parents=True, exist_ok=True)
    tensor = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)
    header = json.dumps(
        {"a1_inner.w3": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, len(tensor)]}}
    ).encode()
    weights = folder / "links.safetensors"
    weights.write_bytes(struct.pack("<Q", len(header)) + header + tensor)
    spec = folder / "links.json"
    spec.write_text(json.dumps({"format": 1, "agents": [], "links": []}) + "\n")
    return [weights, spec]


def flip_byte(path: pathlib.Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
