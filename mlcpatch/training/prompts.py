"""Agent inputs for training, built exactly as the loop builds them (`mlcpatch.loop.prompts`):
the role's system prompt and template, chat-templated, the local tools' results in `{tools}`,
split at the `{latent}` slot into the token ids before and after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlcpatch.loop.patterns import AgentRole
from mlcpatch.loop.prompts import MARKER, ids_of, render
from mlcpatch.loop.tools import run_tools


@dataclass(frozen=True)
class PromptParts:
    """Token ids before and after the latent slot."""

    prefix: list[int]
    suffix: list[int]


def render_parts(tokenizer: Any, role: AgentRole, question: str) -> tuple[str, str]:
    """Text before and after the slot, as the loop renders it (tools run on the question)."""
    tools = run_tools(role.tools, question) if role.tools else []
    prompt = render(tokenizer, role, question, "\n".join(tools) or "none")
    before, _, after = prompt.partition(MARKER)
    return before, after


def tokenize_parts(tokenizer: Any, role: AgentRole, question: str) -> PromptParts:
    before, after = render_parts(tokenizer, role, question)
    return PromptParts(ids_of(tokenizer, before), ids_of(tokenizer, after))


class PromptCache:
    """Tokenized prompt parts per (agent, question): datasets repeat questions every epoch."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], PromptParts] = {}

    def get(self, agent: str, tokenizer: Any, role: AgentRole, question: str) -> PromptParts:
        key = (agent, question)
        if key not in self._parts:
            self._parts[key] = tokenize_parts(tokenizer, role, question)
        return self._parts[key]


def answer_ids(tokenizer: Any, answer: str, eos_id: int | None) -> list[int]:
    ids = list(tokenizer(answer, add_special_tokens=False).input_ids)
    return ids + ([eos_id] if eos_id is not None else [])


def training_text(tokenizer: Any, role: AgentRole, question: str, answer: str) -> str:
    """The agent's prompt with an empty slot followed by the answer: stage-1 text that looks
    like what the agent reads in the loop."""
    before, after = render_parts(tokenizer, role, question)
    return before + after + answer
