"""The loop itself, latent and text, step by step as docs/DESIGN.md fixes it.

For each round, for each agent in pattern order:
1. build its input from its template; what the agents it receives from handed over goes in the
   `{latent}` slot (vectors in latent mode, text in text mode);
2. start a fresh sequence and run the input: `get_last_hidden` (latent) or `prefill` (text);
3. latent: m thoughts, h -> inner(h) -> decode_last_hidden -> h; text: generate up to T tokens;
4. hand over inner(L) through each receiver's outer link (latent) or the text (text mode);
5. the last agent of the last round decodes the answer with prefill/decode and the sampler.
Both modes count the same things the same way (see `AgentStep`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mlcpatch.errors import MlcpatchError
from mlcpatch.links.files import load_links
from mlcpatch.links.forward import Link
from mlcpatch.links.linkfile import LinkFile, LinkFileError
from mlcpatch.loop.backends import ModelBackend
from mlcpatch.loop.patterns import AgentRole, Pattern
from mlcpatch.loop.prompts import latent_input, render, text_input
from mlcpatch.loop.tools import run_tools
from mlcpatch.runtime import sample

MODES = ("latent", "text")


class LoopError(MlcpatchError, ValueError):
    """Settings, links or models that the loop cannot run together; the message says which."""


@dataclass
class Settings:
    rounds: int = 2
    latent_steps: int = 8
    max_new_tokens: int = 64  # the final answer
    text_tokens: int = 48  # each intermediate agent in text mode
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise LoopError("rounds must be at least 1")
        if self.latent_steps < 1:
            raise LoopError("latent steps must be at least 1")
        if self.max_new_tokens < 1 or self.text_tokens < 1:
            raise LoopError("token budgets must be at least 1")


@dataclass
class Agent:
    role: AgentRole
    backend: ModelBackend


@dataclass
class Links:
    inner: dict[str, Link]  # agent name -> link
    outer: dict[tuple[str, str], Link]  # (sender, receiver) -> link

    @classmethod
    def from_file(
        cls, link_file: LinkFile, pattern: Pattern, agents: list[Agent], source: str
    ) -> Links:
        """The file's links for this pattern, checked against the models they run with."""
        link_file.check_models({a.role.name: a.backend.hidden_size for a in agents}, source)

        def make(kind: str, src: str, dst: str) -> Link:
            spec = link_file.find(kind, src, dst)
            if spec is None:
                inner_what = f"inner link for agent {src!r}"
                what = inner_what if kind == "inner" else f"outer link {src}->{dst}"
                raise LinkFileError(f"{source}: no {what} (pattern {pattern.name})")
            return Link.from_file(link_file, spec.name)

        inner = {a.role.name: make("inner", a.role.name, a.role.name) for a in agents}
        outer = {(s, r): make("outer", s, r) for s, r in pattern.handoffs()}
        return cls(inner, outer)

    @classmethod
    def load(cls, path: str | Path, pattern: Pattern, agents: list[Agent]) -> Links:
        return cls.from_file(load_links(Path(path)), pattern, agents, str(path))


@dataclass
class AgentStep:
    """One agent's turn in one round."""

    round: int
    agent: str
    input_positions: int  # prompt tokens + handed-over vectors
    latent_steps: int
    tokens_generated: int  # sampled tokens only
    positions_processed: int  # every position the model ran over
    seconds: float
    bytes_handed: int  # what this agent handed to the next ones
    text: str = ""  # generated text (text mode, and the final answer)
    tool_results: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    mode: str
    pattern: str
    question: str
    answer: str
    seconds: float
    steps: list[AgentStep]

    def total(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.steps)

    @property
    def tokens_generated(self) -> int:
        return self.total("tokens_generated")

    def per_round(self) -> list[dict[str, float]]:
        rounds: dict[int, dict[str, float]] = {}
        for step in self.steps:
            row = rounds.setdefault(
                step.round,
                {
                    "round": step.round,
                    "tokens_generated": 0,
                    "positions_processed": 0,
                    "latent_steps": 0,
                    "bytes_handed": 0,
                    "seconds": 0.0,
                },
            )
            for key in (
                "tokens_generated",
                "positions_processed",
                "latent_steps",
                "bytes_handed",
                "seconds",
            ):
                row[key] += getattr(step, key)
        return [rounds[r] for r in sorted(rounds)]

    def to_json(self) -> dict:
        return {
            "mode": self.mode,
            "pattern": self.pattern,
            "question": self.question,
            "answer": self.answer,
            "tokens_generated": self.tokens_generated,
            "positions_processed": self.total("positions_processed"),
            "latent_steps": self.total("latent_steps"),
            "bytes_handed": self.total("bytes_handed"),
            "seconds": self.seconds,
            "rounds": self.per_round(),
            "steps": [asdict(s) for s in self.steps],
        }


Progress = Callable[[str, int, str], None]  # (event, round, agent)


def _generate(
    backend: ModelBackend,
    embeds: np.ndarray,
    budget: int,
    settings: Settings,
    rng: np.random.Generator,
) -> tuple[list[int], str]:
    """Prefill then sample up to `budget` tokens; (token ids incl. a stop token, text)."""
    stops = set(backend.default_stop_ids())
    logits = backend.prefill(embeds)
    tokens: list[int] = []
    for step in range(budget):
        token = sample(logits, settings.temperature, settings.top_p, settings.temperature <= 0, rng)
        tokens.append(token)
        if token in stops:
            break
        if step + 1 < budget:
            logits = backend.decode(backend.embed([token]))
    text_ids = [t for t in tokens if t not in stops]
    return tokens, backend.tokenizer.decode(text_ids, skip_special_tokens=True).strip()


def _check_system(pattern: Pattern, agents: list[Agent], links: Links | None) -> None:
    if [a.role.name for a in agents] != [r.name for r in pattern.agents]:
        raise ValueError("agents must follow the pattern's order")
    if links is None:
        return
    for agent in agents:
        link = links.inner.get(agent.role.name)
        if link is None:
            raise LoopError(f"no inner link for agent {agent.role.name}")
        d = agent.backend.hidden_size
        if (link.in_dim, link.out_dim) != (d, d):
            raise LoopError(
                f"inner link {link.name}: maps {link.in_dim}->{link.out_dim}, but agent "
                f"{agent.role.name}'s model has hidden size {d}"
            )
    sizes = {a.role.name: a.backend.hidden_size for a in agents}
    for sender, receiver in pattern.handoffs():
        link = links.outer.get((sender, receiver))
        if link is None:
            raise LoopError(f"no outer link for {sender} -> {receiver}")
        want = (sizes[sender], sizes[receiver])
        if (link.in_dim, link.out_dim) != want:
            raise LoopError(
                f"outer link {link.name}: maps {link.in_dim}->{link.out_dim}, but {sender} -> "
                f"{receiver} needs {want[0]}->{want[1]}"
            )


def run(
    mode: str,
    pattern: Pattern,
    agents: list[Agent],
    question: str,
    settings: Settings,
    links: Links | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> RunResult:
    """One full run of the system in `mode` ("latent" or "text")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "latent" and links is None:
        raise ValueError("latent mode needs links (a link file or the closed-form start)")
    _check_system(pattern, agents, links if mode == "latent" else None)
    notify = progress or (lambda event, rnd, agent: None)
    rng = np.random.default_rng(settings.seed)
    handed: dict[str, np.ndarray | str] = {}  # sender -> its latest thoughts (or text)
    steps: list[AgentStep] = []
    answer = ""
    start = time.perf_counter()
    for rnd in range(1, settings.rounds + 1):
        for index, agent in enumerate(agents):
            if should_stop is not None and should_stop():
                raise InterruptedError("run stopped")
            role, backend = agent.role, agent.backend
            final = rnd == settings.rounds and index == len(agents) - 1
            notify("agent", rnd, role.name)
            began = time.perf_counter()
            tool_results = run_tools(role.tools, question) if role.tools else []
            prompt = render(backend.tokenizer, role, question, "\n".join(tool_results) or "none")
            senders = [s for s in role.receives if s in handed]
            if mode == "latent":
                vectors = [links.outer[(s, role.name)](handed[s]) for s in senders]  # type: ignore[union-attr]
                embeds = latent_input(backend, prompt, np.concatenate(vectors) if vectors else None)
            else:
                text = "\n\n".join(f"[{s}] {handed[s]}" for s in senders)
                embeds = text_input(backend, prompt, text)
            backend.reset()
            step = AgentStep(
                rnd, role.name, len(embeds), 0, 0, len(embeds), 0.0, 0, tool_results=tool_results
            )
            if final or mode == "text":
                budget = settings.max_new_tokens if final else settings.text_tokens
                tokens, text = _generate(backend, embeds, budget, settings, rng)
                step.tokens_generated = len(tokens)
                step.positions_processed += max(len(tokens) - 1, 0)  # the last is never fed back
                step.text = text
                if final:
                    answer = text
                else:
                    handed[role.name] = text
                    receivers = sum(role.name in a.role.receives for a in agents)
                    step.bytes_handed = len(text.encode("utf-8")) * receivers
            else:
                inner = links.inner[role.name]  # type: ignore[union-attr]
                h = backend.get_last_hidden(embeds)[-1]
                thoughts = []
                for _ in range(settings.latent_steps):
                    h = backend.decode_last_hidden(inner(h))
                    thoughts.append(h)
                    notify("latent", rnd, role.name)
                step.latent_steps = settings.latent_steps
                step.positions_processed += settings.latent_steps
                handed[role.name] = inner(np.stack(thoughts))
                step.bytes_handed = sum(
                    settings.latent_steps * a.backend.hidden_size * 4
                    for a in agents
                    if role.name in a.role.receives
                )
            step.seconds = time.perf_counter() - began
            steps.append(step)
    return RunResult(mode, pattern.name, question, answer, time.perf_counter() - start, steps)


def run_single(
    pattern: Pattern, agents: list[Agent], question: str, settings: Settings
) -> RunResult:
    """The baseline: the final agent's model alone, with the final agent's role and tools, an
    empty `{latent}` slot and the same answer budget (`max_new_tokens`) as the loop's answer."""
    agent = agents[-1]
    role, backend = agent.role, agent.backend
    rng = np.random.default_rng(settings.seed)
    start = time.perf_counter()
    tool_results = run_tools(role.tools, question) if role.tools else []
    prompt = render(backend.tokenizer, role, question, "\n".join(tool_results) or "none")
    embeds = text_input(backend, prompt, "")
    backend.reset()
    tokens, text = _generate(backend, embeds, settings.max_new_tokens, settings, rng)
    seconds = time.perf_counter() - start
    step = AgentStep(
        1,
        role.name,
        len(embeds),
        0,
        len(tokens),
        len(embeds) + max(len(tokens) - 1, 0),
        seconds,
        0,
        text=text,
        tool_results=tool_results,
    )
    return RunResult("single", pattern.name, question, text, seconds, [step])


def compare(latent: RunResult, text: RunResult) -> dict[str, float]:
    """Latent against text: the figures the paper reports."""
    reduction = 1 - latent.tokens_generated / text.tokens_generated if text.tokens_generated else 0
    return {
        "speedup": text.seconds / latent.seconds if latent.seconds else float("inf"),
        "token_reduction": reduction,
        "latent_tokens": latent.tokens_generated,
        "text_tokens": text.tokens_generated,
    }
