"""Building an agent's input: chat-templated text around the `{latent}` slot, and what goes in it.

The template is rendered once with a marker in the slot. Latent mode embeds the text before and
after the marker and puts the handed-over vectors between; text mode puts the handed-over text
in place of the marker and tokenizes the whole. Both modes therefore see the same prompt text.

`AgentInput` keeps the token ids the embeddings start with, so the loop can tell which leading
positions a sequence already holds (`stable_prefix`: the tokens before the slot, as this very
input tokenized them) and run only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mlcpatch.loop.patterns import AgentRole

MARKER = "\u2063LATENT\u2063"  # invisible separators: never in a real prompt


def render(tokenizer: Any, role: AgentRole, question: str, tools: str) -> str:
    """The agent's prompt, chat-templated, with MARKER where handed-over content goes."""
    content = role.template.format(question=question, latent=MARKER, tools=tools)
    if not getattr(tokenizer, "chat_template", None):
        return f"{role.system}\n\n{content}\n".lstrip()
    messages = [{"role": "user", "content": content}]
    if role.system:
        messages.insert(0, {"role": "system", "content": role.system})
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates that reject a system turn: fold it into the user turn
        merged = [{"role": "user", "content": f"{role.system}\n\n{content}".strip()}]
        return tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


def ids_of(tokenizer: Any, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass
class AgentInput:
    embeds: np.ndarray  # [n, hidden]: what the model runs over
    head_ids: list[int]  # the token ids of embeds[: len(head_ids)]
    stable_prefix: int  # head_ids[:stable_prefix] are the tokens of the text before the slot


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def latent_parts(backend: Any, prompt: str, vectors: np.ndarray | None) -> AgentInput:
    """The prompt with `vectors` [k, hidden] at the marker; the text before it is the prefix."""
    before, _, after = prompt.partition(MARKER)
    before_ids, after_ids = ids_of(backend.tokenizer, before), ids_of(backend.tokenizer, after)
    parts = [backend.embed(before_ids)] if before_ids else []
    if vectors is not None and len(vectors):
        parts.append(np.asarray(vectors, np.float32))
    if after_ids:
        parts.append(backend.embed(after_ids))
    embeds = np.concatenate(parts).astype(np.float32)
    return AgentInput(embeds, before_ids, len(before_ids))


def text_parts(backend: Any, prompt: str, handed: str) -> AgentInput:
    """The prompt with `handed` at the marker, tokenized whole; its prefix is as many leading
    tokens as it shares with the text before the marker tokenized alone (a token that the
    tokenizer merged across the marker is not part of it)."""
    ids = ids_of(backend.tokenizer, prompt.replace(MARKER, handed))
    before_ids = ids_of(backend.tokenizer, prompt.partition(MARKER)[0])
    return AgentInput(backend.embed(ids), ids, common_prefix(ids, before_ids))


def latent_input(backend: Any, prompt: str, vectors: np.ndarray | None) -> np.ndarray:
    """Embeddings of the prompt with `vectors` [k, hidden] at the marker."""
    return latent_parts(backend, prompt, vectors).embeds


def text_input(backend: Any, prompt: str, handed: str) -> np.ndarray:
    return backend.embed(ids_of(backend.tokenizer, prompt.replace(MARKER, handed)))
