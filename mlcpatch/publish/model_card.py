"""The Hub model card (README.md), written from the manifest alone.

It holds no clock time and no local state, so publishing the same folder twice gives the same bytes
and the card is never re-uploaded for nothing.
"""

from __future__ import annotations

import re
from typing import Any

from mlcpatch.artifact import Manifest
from mlcpatch.publish.artifact import Artifact

CARD_NAME = "README.md"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _front_matter(manifest: Manifest) -> list[str]:
    source = manifest.source
    lines = ["---", "library_name: mlc-llm"]
    # The Hub validates base_model as a repo id: only a model that came from the Hub has one.
    if source.get("kind") == "hub" and _HUB_ID.match(str(source.get("spec", ""))):
        lines.append(f"base_model: {source['spec']}")
    lines += ["tags:", "  - mlc-llm", "  - webgpu", "  - recursivemas", "---", ""]
    return lines


def _summary(artifact: Artifact) -> list[str]:
    m = artifact.manifest
    source, options, patch = m.source, m.options, m.patch
    rows = [
        ("base model", f"`{source.get('spec', 'unknown')}` ({source.get('kind', 'unknown')})"),
        ("architecture", options.get("arch", "unknown")),
        ("quantization", options.get("quantization", "unknown")),
        ("targets", options.get("targets", [])),
        ("context window", options.get("context_window_size", "unknown")),
        ("prefill chunk", options.get("prefill_chunk_size", "unknown")),
        ("conversation template", options.get("conv_template", "unknown")),
    ]
    if options.get("cpu"):
        rows.append(
            ("CPU library built for", f"`{options['cpu']}` (needs a CPU with its instructions)")
        )
    if patch:
        added = patch.get("functions_added") or ["get_last_hidden", "decode_last_hidden"]
        rows.append(
            ("hidden-state functions", f"{_cell(added)} (mlcpatch {patch.get('patcher_version')})")
        )
    for target, lib in m.libraries.items():
        rows.append((f"library ({target})", f"`{lib}`"))
    return ["| | |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in rows), ""]


def _tools(manifest: Manifest) -> list[str]:
    tools = manifest.tools
    if not tools:
        return []
    rows = [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(tools.items())]
    return ["## Tool versions", "", "| tool | version |", "|---|---|", *rows, ""]


def _files(artifact: Artifact) -> list[str]:
    rows = [f"| `{f.name}` | {f.size} | `{f.sha256}` |" for f in artifact.files]
    return [
        "## Files",
        "",
        "Every file below is listed with the same size and sha256 in `manifest.json`.",
        "",
        "| file | bytes | sha256 |",
        "|---|---:|---|",
        *rows,
        "",
    ]


def _how_to_load(artifact: Artifact, repo_id: str, endpoint: str) -> list[str]:
    libraries = artifact.manifest.libraries
    base = f"{endpoint.rstrip('/')}/{repo_id}/resolve/main/"
    lines = [
        "## How to load",
        "",
        "Python (CPU), with this project's `mlcpatch` command installed:",
        "",
        "```sh",
        f"hf download {repo_id} --local-dir {artifact.name}",
        f'mlcpatch generate {artifact.name} --prompt "Hello"',
        "```",
        "",
    ]
    if "webgpu" in libraries:
        lines += [
            "Browser (WebGPU), with `@mlc-ai/web-runtime`: fetch the weights with",
            f'`fetchTensorCache("{base}", tvm.webgpu())` and instantiate',
            f"`{base}{libraries['webgpu']}`; `mlc-chat-config.json` holds the model settings.",
            "",
        ]
    if "wasm" in libraries:
        lines += [
            "Browser without WebGPU (the CPU, WebAssembly): the same with `tvm.cpu()` and",
            f"`{base}{libraries['wasm']}` (no GPU pipelines to load).",
            "",
        ]
    return lines


def render_model_card(artifact: Artifact, repo_id: str, endpoint: str) -> str:
    lines = [
        *_front_matter(artifact.manifest),
        f"# {artifact.name}",
        "",
        "An artifact folder built by `mlcpatch build` (RecursiveMAS for WebGPU): weight shards, "
        "tokenizer, compiled libraries and a manifest. The model exposes `get_last_hidden` and "
        "`decode_last_hidden` besides `prefill`/`decode`, so agents can hand each other hidden "
        "states.",
        "",
        *_summary(artifact),
        *_how_to_load(artifact, repo_id, endpoint),
        *_tools(artifact.manifest),
        *_files(artifact),
    ]
    return "\n".join(lines)
