"""A multi-agent system: agents, their order, rounds, latent steps, and the links that follows.

The agents are always a loop `Pattern` (`mlcpatch.loop.patterns`), so the trainer runs exactly
the system that `mlcpatch run`, `eval` and the playground run: the same roles, prompts, slot,
tools and hand-offs (several senders into one receiver included). A pattern comes from a
pattern file or a built-in name (`pattern_file`), or, for older configs, is made from a chain of
`AgentConfig` role templates (each agent receives from the one before it, the first from the
last).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlcpatch.errors import MlcpatchError
from mlcpatch.links.spec import VARIANTS, LinkSpec, check_name, make_spec
from mlcpatch.loop.patterns import AgentRole, Pattern

LATENT_SLOT = "{latent}"
QUESTION_SLOT = "{question}"

DEFAULT_ROLES: dict[str, str] = {
    "planner": (
        "You are the Planner. Work out how to solve the question.\nQuestion: {question}\n{latent}"
    ),
    "critic": (
        "You are the Critic. Check the reasoning you were handed.\nQuestion: {question}\n{latent}"
    ),
    "solver": (
        "You are the Solver. Reply with the final answer only.\nQuestion: {question}\n{latent}"
    ),
}


class SystemConfigError(MlcpatchError, ValueError):
    """The system description is inconsistent (unknown agent in the pattern, bad template)."""


def default_agent_names(count: int) -> list[str]:
    """planner ... solver: the last agent answers, the first plans, any others criticise."""
    if count == 1:
        return ["solver"]
    middle = ["critic"] if count == 3 else [f"critic{i}" for i in range(1, count - 1)]
    return ["planner", *middle, "solver"]


def default_role(name: str) -> str:
    base = name.rstrip("0123456789")
    return DEFAULT_ROLES.get(base, DEFAULT_ROLES["critic"].replace("Critic", name.title()))


@dataclass(frozen=True)
class AgentConfig:
    name: str
    model: str
    role: str

    def validate(self) -> None:
        check_name(self.name, "agent")
        if self.role.count(LATENT_SLOT) != 1:
            raise SystemConfigError(
                f"agent {self.name}: role template must contain {LATENT_SLOT} exactly once"
            )
        if self.role.count(QUESTION_SLOT) > 1:
            raise SystemConfigError(f"agent {self.name}: {QUESTION_SLOT} may appear at most once")


@dataclass
class SystemConfig:
    agents: list[AgentConfig]
    pattern: list[str] = field(default_factory=list)
    rounds: int = 1
    latent_steps: int = 4
    variant: str = "residual"
    bottleneck: int | None = None
    activation: str = "gelu"
    loop: Pattern | None = None  # a loop pattern; None: a chain made from `agents`

    def __post_init__(self) -> None:
        if not self.pattern:
            self.pattern = [agent.name for agent in self.agents]

    def validate(self) -> None:
        if not self.agents:
            raise SystemConfigError("a system needs at least one agent")
        names = [agent.name for agent in self.agents]
        if len(set(names)) != len(names):
            raise SystemConfigError(f"agent names must be unique, got {names}")
        for agent in self.agents:
            if self.loop is None:
                agent.validate()
            else:
                check_name(agent.name, "agent")
        if self.loop is None and len(set(self.pattern)) != len(self.pattern):
            raise SystemConfigError(
                f"pattern {self.pattern} names an agent twice; write a pattern file instead"
            )
        for name in self.pattern:
            if name not in names:
                raise SystemConfigError(
                    f"pattern names agent {name!r}, which is not defined ({names})"
                )
        if self.rounds < 1:
            raise SystemConfigError("rounds must be at least 1")
        if self.latent_steps < 1:
            raise SystemConfigError("latent steps must be at least 1")
        if self.variant not in VARIANTS:
            raise SystemConfigError(f"variant {self.variant!r} is not one of {VARIANTS}")
        if len(self.turns()) < 2:
            raise SystemConfigError(
                "the system needs at least two turns (agents x rounds) to hand over"
            )

    def agent(self, name: str) -> AgentConfig:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise SystemConfigError(f"no agent named {name!r}")

    def loop_pattern(self) -> Pattern:
        """The loop's pattern this system runs."""
        if self.loop is not None:
            return self.loop
        order = list(self.pattern)
        roles = []
        for index, name in enumerate(order):
            sender = order[index - 1] if len(order) > 1 else None
            template = self.agent(name).role.replace("{", "{{").replace("}", "}}")
            template = template.replace("{{question}}", "{question}")
            template = template.replace("{{latent}}", "{latent}")
            roles.append(AgentRole(name, "", template, (sender,) if sender else ()))
        return Pattern(
            "chain", "agents in a chain, the first receiving from the last", tuple(roles)
        )

    def turns(self) -> list[str]:
        """Agent names in the order they act, all rounds unrolled."""
        return [name for _ in range(self.rounds) for name in self.pattern]

    def handoffs(self) -> list[tuple[str, str]]:
        """Every (sender, receiver) pair of the pattern: those the unrolled rounds use, in the
        order they first happen, then those they never reach (present so that the file loads
        into the loop for any number of rounds)."""
        loop = self.loop_pattern()
        pairs: list[tuple[str, str]] = []
        spoken: set[str] = set()
        for name in self.turns():
            for sender in loop.agent(name).receives:
                if sender in spoken and (sender, name) not in pairs:
                    pairs.append((sender, name))
            spoken.add(name)
        return pairs + [p for p in loop.handoffs() if p not in pairs]

    def link_specs(self, hidden_sizes: dict[str, int]) -> list[LinkSpec]:
        """One inner link per agent in the pattern, one outer link per handoff pair."""
        specs = []
        for name in dict.fromkeys(self.pattern):
            dim = hidden_sizes[name]
            specs.append(
                make_spec(
                    "inner", name, name, dim, dim, self.variant, self.bottleneck, self.activation
                )
            )
        for source, target in self.handoffs():
            specs.append(
                make_spec(
                    "outer",
                    source,
                    target,
                    hidden_sizes[source],
                    hidden_sizes[target],
                    self.variant,
                    self.bottleneck,
                    self.activation,
                )
            )
        return specs
