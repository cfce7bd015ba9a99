"""Links without training: the trainer's closed-form start, fitted on the agents' own backends.

The closed form itself lives in `mlcpatch.training.closed_form` (ridge regression, packed into the
link's form); this module only collects what it needs from a backend, which may be the compiled
CPU runtime rather than a PyTorch model: hidden states over a bundled text and the embedding table.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from mlcpatch.loop.backends import ModelBackend
from mlcpatch.loop.linkfile import links_from_file
from mlcpatch.loop.orchestrator import Agent, Links
from mlcpatch.loop.patterns import Pattern
from mlcpatch.loop.prompts import ids_of
from mlcpatch.training.closed_form import AgentSamples, closed_form_links
from mlcpatch.training.linkfile import LinkFile

MAX_CALIBRATION_TOKENS = 256
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


def samples(name: str, backend: ModelBackend) -> AgentSamples:
    """(last hidden at t, token t+1) pairs over the calibration text, and the embedding table."""
    ids = ids_of(backend.tokenizer, calibration_text())
    ids = ids[: min(MAX_CALIBRATION_TOKENS, backend.context_window - 1)]
    if len(ids) < 8:
        raise ValueError(f"agent {name}: calibration text is too short for this tokenizer")
    backend.reset()
    hidden = backend.get_last_hidden(backend.embed(ids))
    backend.reset()
    return AgentSamples(
        name=name,
        hidden=hidden[:-1],
        next_ids=np.asarray(ids[1:]),
        embedding=embedding_table(backend),
        vocab=backend.tokenizer.get_vocab(),
    )


def closed_form_link_file(pattern: Pattern, agents: list[Agent]) -> LinkFile:
    """Closed-form links for every agent and hand-off of the pattern, as a link file."""
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
    return closed_form_links(collected, pattern.handoffs())


def fitted_links(pattern: Pattern, agents: list[Agent]) -> Links:
    """Closed-form links ready to run (what `mlcpatch run` uses without --links)."""
    return links_from_file(
        closed_form_link_file(pattern, agents), pattern, agents, "closed-form links"
    )
