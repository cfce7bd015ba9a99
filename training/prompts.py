"""Agent inputs: role template + question, rendered with the chat template, split at the slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlcpatch.training.system import LATENT_SLOT, QUESTION_SLOT

# Survives chat-template rendering untouched and never occurs in real text.
_MARKER = "\u2063\u2063latent-slot\u2063\u2063"


@dataclass(frozen=True)
class PromptParts:
    """Token ids before and after the latent slot."""

    prefix: list[int]
    suffix: list[int]


def render(tokenizer: Any, role: str, question: str) -> tuple[str, str]:
    """Text before and after the slot, after the chat template (when the tokenizer has one)."""
    # str.replace, not str.format: questions may contain braces.
    content = role.replace(QUESTION_SLOT, question).replace(LATENT_SLOT, _MARKER)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = content + "\n"
    before, after = text.split(_MARKER)
    return before, after


def tokenize_parts(tokenizer: Any, role: str, question: str) -> PromptParts:
    before, after = render(tokenizer, role, question)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    # Chat templates spell out BOS themselves; plain prompts get the tokenizer's own.
    prefix = tokenizer(before, add_special_tokens=not has_template).input_ids
    suffix = tokenizer(after, add_special_tokens=False).input_ids
    return PromptParts(list(prefix), list(suffix))


class PromptCache:
    """Tokenized prompt parts per (agent, question): datasets repeat questions every epoch."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], PromptParts] = {}

    def get(self, agent: str, tokenizer: Any, role: str, question: str) -> PromptParts:
        key = (agent, question)
        if key not in self._parts:
            self._parts[key] = tokenize_parts(tokenizer, role, question)
        return self._parts[key]


def answer_ids(tokenizer: Any, answer: str, eos_id: int | None) -> list[int]:
    ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
    return ids + ([eos_id] if eos_id is not None else [])


def training_text(tokenizer: Any, role: str, question: str, answer: str) -> str:
    """The agent's prompt with an empty slot followed by the answer: stage-1 text that looks
    like what the agent reads in the loop."""
    before, after = render(tokenizer, role, question)
    return before + after + answer
