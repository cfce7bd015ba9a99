"""RecursiveLink trainer and link files (issue: RecursiveLink trainer and the link file formats).

Modules, one job each:
  spec            link metadata and the shapes every format derives from
  linkfile        links as numpy arrays + validation (LinkFile, LinkFileError)
  module          the links as PyTorch modules (RecursiveLink, LinkSet)
  format_binary   links.safetensors + links.json;  format_json  recursivelink.json
  link_io         load/save/convert by path;  reference_import  reference .pt state dicts
  closed_form     closed-form links from raw arrays or HF models (closed_form_links)
  system          agents, pattern, rounds, latent steps -> link specs
  tiny            the built-in tiny heterogeneous model pair;  backbones  frozen shared models
  prompts         role templates around the latent slot;  unroll  the differentiable latent loop
  data            JSONL question/answer data
  config, checkpoint, batches, init_links, trainer   the two training stages on accelerate
  command         the click commands;  bench  `python -m mlcpatch.training.bench`

Names below are imported lazily, so `import mlcpatch.training` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "closed_form_links": "closed_form",
    "AgentSamples": "closed_form",
    "load_links": "link_io",
    "save_links": "link_io",
    "convert_links": "link_io",
    "LinkFile": "linkfile",
    "LinkFileError": "linkfile",
    "LinkSpec": "spec",
    "LinkSet": "module",
    "RecursiveLink": "module",
    "import_reference": "reference_import",
    "TrainConfig": "config",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
