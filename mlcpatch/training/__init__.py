"""RecursiveLink trainer (issue: RecursiveLink trainer and the link file formats).

The links themselves (spec, numpy and PyTorch forms, file formats, closed form) live in
`mlcpatch.links`; this package trains them. Modules, one job each:
  system          agents, pattern, rounds, latent steps -> link specs
  tiny            the built-in tiny heterogeneous model pair;  backbones  frozen shared models
  prompts         role templates around the latent slot;  unroll  the differentiable latent loop
  data            JSONL question/answer data;  reference_import  reference .pt state dicts
  config, checkpoint, batches, init_links, trainer   the two training stages on accelerate
  command         the click commands;  bench  `python -m mlcpatch.training.bench`

Names below are imported lazily, so `import mlcpatch.training` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "import_reference": "reference_import",
    "TrainConfig": "config",
    "train": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
