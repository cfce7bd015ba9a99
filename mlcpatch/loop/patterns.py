"""Patterns are data: who the agents are, what they are told, and whose thoughts each receives.

A pattern file (TOML) lists agents in run order. Each agent has a system prompt, a user template
with `{question}`, `{latent}` (where handed-over vectors or text go) and optionally `{tools}`, the
agents it `receives` from, and the local tools run for it. The last agent is the one that answers.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mlcpatch.errors import MlcpatchError

SLOTS = {"question", "latent", "tools"}
KNOWN_TOOLS = {"calculator", "search"}


class PatternError(MlcpatchError, ValueError):
    """A pattern file is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class AgentRole:
    name: str
    system: str
    template: str
    receives: tuple[str, ...]
    tools: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pattern:
    name: str
    description: str
    agents: tuple[AgentRole, ...]

    @property
    def final(self) -> AgentRole:
        return self.agents[-1]

    def agent(self, name: str) -> AgentRole:
        return next(a for a in self.agents if a.name == name)

    def handoffs(self) -> list[tuple[str, str]]:
        """Every (sender, receiver) pair, in run order of the receiver."""
        return [(s, a.name) for a in self.agents for s in a.receives]


def _slots(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}


def _require(table: dict, key: str, kind: type, where: str) -> object:
    if key not in table:
        raise PatternError(f"{where}: missing field '{key}'")
    value = table[key]
    if not isinstance(value, kind):
        raise PatternError(f"{where}: field '{key}' must be a {kind.__name__}")
    return value


def parse_pattern(data: dict, where: str) -> Pattern:
    name = _require(data, "name", str, where)
    agents_raw = _require(data, "agents", list, where)
    if len(agents_raw) < 2:
        raise PatternError(f"{where}: a pattern needs at least two agents")
    agents: list[AgentRole] = []
    for index, raw in enumerate(agents_raw):
        at = f"{where}: agents[{index}]"
        if not isinstance(raw, dict):
            raise PatternError(f"{at}: must be a table")
        agent_name = _require(raw, "name", str, at)
        template = _require(raw, "template", str, at)
        try:
            slots = _slots(template)
        except ValueError as err:
            raise PatternError(f"{at}: bad template: {err}") from None
        unknown = slots - SLOTS
        if unknown:
            raise PatternError(
                f"{at}: unknown template slot(s) {sorted(unknown)}; use {sorted(SLOTS)}"
            )
        receives = tuple(raw.get("receives", []))
        tools = tuple(raw.get("tools", []))
        if receives and "latent" not in slots:
            raise PatternError(f"{at}: receives from {list(receives)} but has no {{latent}} slot")
        if tools and "tools" not in slots:
            raise PatternError(f"{at}: uses tools but has no {{tools}} slot")
        bad_tools = set(tools) - KNOWN_TOOLS
        if bad_tools:
            raise PatternError(
                f"{at}: unknown tool(s) {sorted(bad_tools)}; known: {sorted(KNOWN_TOOLS)}"
            )
        agents.append(AgentRole(agent_name, str(raw.get("system", "")), template, receives, tools))
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise PatternError(f"{where}: agent names must be unique, got {names}")
    for agent in agents:
        for sender in agent.receives:
            if sender not in names:
                raise PatternError(f"{where}: agent {agent.name} receives from unknown {sender!r}")
            if sender == agent.name:
                raise PatternError(f"{where}: agent {agent.name} cannot receive from itself")
    return Pattern(name, str(data.get("description", "")), tuple(agents))


def builtin_patterns() -> list[str]:
    folder = resources.files("mlcpatch.loop") / "patterns"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_pattern(name_or_path: str) -> Pattern:
    """A built-in pattern by name, or a user's pattern file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise PatternError(f"{path}: no such pattern file")
        text, where = path.read_text(encoding="utf-8"), str(path)
    else:
        if name_or_path not in builtin_patterns():
            known = ", ".join(builtin_patterns())
            raise PatternError(f"unknown pattern {name_or_path!r}; built-in: {known}")
        resource = resources.files("mlcpatch.loop") / "patterns" / f"{name_or_path}.toml"
        text, where = resource.read_text(encoding="utf-8"), f"{name_or_path}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PatternError(f"{where}: not valid TOML: {err}") from None
    return parse_pattern(data, where)
