"""Links without training: the trainer's closed-form start, fitted on the agents' own backends.

The closed form itself lives in `mlcpatch.links.closed_form` (ridge regression, packed into the
link's form); this module only collects what it needs from a backend, which may be the compiled
CPU runtime rather than a PyTorch model: hidden states over a bundled text and the embedding table.

The bundled text (`data/calibration.txt`) is generic prose with no digits and nothing from any
question set, so a closed-form start never sees what it is later asked. A ridge fit of a
d-dimensional map needs several times d samples; the text gives about 3,300 SmolLM2 tokens, and
`MAX_CALIBRATION_TOKENS` caps what is used. The text is run in chunks that fit the model's context.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from mlcpatch.links.closed_form import AgentSamples, closed_form_links
from mlcpatch.links.linkfile import LinkFile
from mlcpatch.links.spec import VARIANTS
from mlcpatch.loop.backends import ModelBackend
from mlcpatch.loop.orchestrator import Agent, Links, LoopError
from mlcpatch.loop.patterns import Pattern
from mlcpatch.loop.prompts import ids_of

MAX_CALIBRATION_TOKENS = 4096
CALIBRATION_CHUNK = 512
EMBED_CHUNK = 4096


def calibration_text() -> str:
    return (resources.files("mlcpatch.loop") / "data" / "calibration.txt").read_text("utf-8")


def embedding_table(backend: ModelBackend) -> np.ndarray:
    return np.concatenate(
        [
            backend.embed(np.arange(start, min(start + EMBED_CHUNK, backend.vocab_size)))
            for start in range(0, backend.vocab_size, EMBED_CHUNK)
        ]
    )


def samples(
    name: str, backend: ModelBackend, max_tokens: int = MAX_CALIBRATION_TOKENS
) -> AgentSamples:
    """(last hidden at t, token t+1) pairs over the calibration text, and the embedding table."""
    ids = ids_of(backend.tokenizer, calibration_text())[:max_tokens]
    if len(ids) < 8:
        raise LoopError(f"agent {name}: calibration text is too short for this tokenizer")
    chunk = max(8, min(CALIBRATION_CHUNK, backend.context_window - 1))
    hidden_parts, next_parts = [], []
    for start in range(0, len(ids) - 1, chunk):
        piece = ids[start : start + chunk + 1]  # one past the chunk: its next token
        if len(piece) < 2:
            break
        backend.reset()
        hidden = backend.get_last_hidden(backend.embed(piece))
        hidden_parts.append(hidden[:-1])
        next_parts.append(np.asarray(piece[1:]))
    backend.reset()
    return AgentSamples(
        name=name,
        hidden=np.concatenate(hidden_parts),
        next_ids=np.concatenate(next_parts),
        embedding=embedding_table(backend),
        vocab=backend.tokenizer.get_vocab(),
    )


def closed_form_link_file(
    pattern: Pattern, agents: list[Agent], variant: str = "residual"
) -> LinkFile:
    """Closed-form links for every agent and hand-off of the pattern, as a link file."""
    if variant not in VARIANTS:
        raise ValueError(f"link form must be one of {VARIANTS}, not {variant!r}")
    cache: dict[int, AgentSamples] = {}
    collected = []
    for agent in agents:
        # Agents sharing one model share its samples: collecting them is the slow part.
        key = id(agent.backend)
        if key not in cache:
            cache[key] = samples(agent.role.name, agent.backend)
        base = cache[key]
        collected.append(
            AgentSamples(agent.role.name, base.hidden, base.next_ids, base.embedding, base.vocab)
        )
    return closed_form_links(collected, pattern.handoffs(), variant=variant)


def fitted_links(pattern: Pattern, agents: list[Agent], variant: str = "residual") -> Links:
    """Closed-form links ready to run (what `mlcpatch run` uses without --links)."""
    return Links.from_file(
        closed_form_link_file(pattern, agents, variant), pattern, agents, "closed-form links"
    )
