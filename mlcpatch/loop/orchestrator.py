"""The loop itself, latent and text, step by step as docs/DESIGN.md fixes it.

For each round, for each agent in pattern order:
1. build its input from its template; what the agents it receives from handed over goes in the
   `{latent}` slot (vectors in latent mode, text in text mode);
2. run the input on the agent's own sequence: `get_last_hidden` (latent) or `prefill` (text).
   With `share_prefix` the sequence keeps the prompt before the slot from the agent's previous
   round (it is truncated back to it) and only the rest is run; without, it starts empty;
3. latent: m thoughts, h -> inner(h) -> decode_last_hidden -> h; text: generate up to T tokens;
4. hand over inner(L) through each receiver's outer link (latent) or the text (text mode);
5. the last agent of the last round decodes the answer with prefill/decode and the sampler.
Both modes count the same things the same way (see `AgentStep`). `run_batch` takes several
questions through the loop in lockstep, batching the model's forwards across them.
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
from mlcpatch.loop.prompts import (
    AgentInput,
    common_prefix,
    latent_parts,
    render,
    text_input,
    text_parts,
)
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
    # Keep each agent's prompt up to the `{latent}` slot in its KV-cache sequence between
    # rounds and run only the rest (same results, fewer positions processed).
    share_prefix: bool = True

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
    positions_reused: int = 0  # leading input positions kept from this agent's previous round


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
            "positions_reused": self.total("positions_reused"),
            "latent_steps": self.total("latent_steps"),
            "bytes_handed": self.total("bytes_handed"),
            "seconds": self.seconds,
            "rounds": self.per_round(),
            "steps": [asdict(s) for s in self.steps],
        }


Progress = Callable[[str, int, str], None]  # (event, round, agent)


class _Slots:
    """Where each (question, agent) keeps its sequence: agents sharing a model get their own
    sequences in its KV cache, and so does every question of a batch."""

    def __init__(self, agents: list[Agent], questions: int) -> None:
        owners: dict[int, list[int]] = {}  # id(backend) -> indices of the agents on it
        for index, agent in enumerate(agents):
            owners.setdefault(id(agent.backend), []).append(index)
        self._seq: dict[tuple[int, int], int] = {}
        for indices in owners.values():
            for q in range(questions):
                for local, index in enumerate(indices):
                    self._seq[(q, index)] = q * len(indices) + local
            agents[indices[0]].backend.open_sequences(questions * len(indices))

    def __call__(self, question: int, agent: int) -> int:
        return self._seq[(question, agent)]


def _generate_batch(
    backend: ModelBackend,
    seqs: list[int],
    embeds: list[np.ndarray],
    budget: int,
    settings: Settings,
    rngs: list[np.random.Generator],
) -> list[tuple[list[int], str]]:
    """Prefill each sequence, then sample up to `budget` tokens for each, decoding the ones
    still going together; per sequence (token ids incl. a stop token, text)."""
    stops = set(backend.default_stop_ids())
    greedy = settings.temperature <= 0
    first = backend.prefill_batch(seqs, embeds)
    logits = {i: first[i] for i in range(len(seqs))}
    tokens: list[list[int]] = [[] for _ in seqs]
    live = list(range(len(seqs)))  # indices still sampling; logits[i] gives their next token
    for step in range(budget):
        going = []
        for i in live:
            token = sample(logits[i], settings.temperature, settings.top_p, greedy, rngs[i])
            tokens[i].append(token)
            if token not in stops:
                going.append(i)
        live = going
        if not live or step + 1 >= budget:
            break
        out = backend.decode_batch(
            [seqs[i] for i in live], backend.embed([tokens[i][-1] for i in live])
        )
        logits = dict(zip(live, out, strict=True))
    results = []
    for ids in tokens:
        text_ids = [t for t in ids if t not in stops]
        results.append((ids, backend.tokenizer.decode(text_ids, skip_special_tokens=True).strip()))
    return results


def _share_across_questions(
    backend: ModelBackend, inputs: list[AgentInput], seqs: list[int]
) -> list[int]:
    """The prompt positions every question of a batch has in common before its ``{latent}``
    slot (an agent's instructions, up to where the questions differ): run once, into the
    first question's sequence, and forked into the others' (the KV cache shares the pages).
    The positions each sequence holds afterwards (all 0: too few questions or nothing in
    common, sequences untouched: the turn starts them over; 0 for one whose backend could not
    fork it: it runs its whole prompt)."""
    if len(inputs) < 2:
        return [0] * len(seqs)
    stables = [given.head_ids[: given.stable_prefix] for given in inputs]
    shared = min(len(given.embeds) - 1 for given in inputs)  # each runs its last position
    for stable in stables[1:]:
        shared = min(shared, common_prefix(stables[0], stable))
    if shared < 1:
        return [0] * len(seqs)
    backend.truncate(seqs[0], 0)  # forks replace the others
    backend.get_last_hidden_batch([seqs[0]], [inputs[0].embeds[:shared]])
    return [shared] + [backend.fork(seqs[0], seq, shared) for seq in seqs[1:]]


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


@dataclass
class _Question:
    """One question's state in a batched run."""

    text: str
    rng: np.random.Generator
    handed: dict[str, np.ndarray | str] = field(default_factory=dict)  # sender -> latest
    steps: list[AgentStep] = field(default_factory=list)
    answer: str = ""


def _agent_input(
    mode: str, backend: ModelBackend, role: AgentRole, item: _Question, links: Links | None
) -> tuple[AgentInput, list[str]]:
    """Step 1 for one question: the agent's input and its tool results."""
    tool_results = run_tools(role.tools, item.text) if role.tools else []
    prompt = render(backend.tokenizer, role, item.text, "\n".join(tool_results) or "none")
    senders = [s for s in role.receives if s in item.handed]
    if mode == "latent":
        vectors = [links.outer[(s, role.name)](item.handed[s]) for s in senders]  # type: ignore[union-attr]
        return latent_parts(backend, prompt, np.concatenate(vectors) if vectors else None), (
            tool_results
        )
    text = "\n\n".join(f"[{s}] {item.handed[s]}" for s in senders)
    return text_parts(backend, prompt, text), tool_results


def run_batch(
    mode: str,
    pattern: Pattern,
    agents: list[Agent],
    questions: list[str],
    settings: Settings,
    links: Links | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[RunResult]:
    """Full runs of the system in `mode` for several questions at once, in lockstep: each agent
    takes its turn for every question together (one ragged prefill, batched decode steps), so
    the questions share the model's forwards. Each question has its own sequences and its own
    sampler, so its result is what `run` gives it alone; its seconds are an equal share of the
    batch's wall time."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    if mode == "latent" and links is None:
        raise ValueError("latent mode needs links (a link file or the closed-form start)")
    if not questions:
        return []
    _check_system(pattern, agents, links if mode == "latent" else None)
    notify = progress or (lambda event, rnd, agent: None)
    batch = [_Question(q, np.random.default_rng(settings.seed)) for q in questions]
    start = time.perf_counter()
    slots = _Slots(agents, len(batch))
    # (question, agent) -> the prompt-prefix token ids its sequence starts with
    held: dict[tuple[int, int], list[int]] = {}
    for rnd in range(1, settings.rounds + 1):
        for index, agent in enumerate(agents):
            if should_stop is not None and should_stop():
                raise InterruptedError("run stopped")
            role, backend = agent.role, agent.backend
            final = rnd == settings.rounds and index == len(agents) - 1
            notify("agent", rnd, role.name)
            began = time.perf_counter()
            inputs = [_agent_input(mode, backend, role, item, links) for item in batch]
            shared = 0  # prompt positions the first question runs for every question of the batch
            if settings.share_prefix and not any((q, index) in held for q in range(len(batch))):
                holds = _share_across_questions(
                    backend, [g for g, _ in inputs], [slots(q, index) for q in range(len(batch))]
                )
                for q, ((given, _), length) in enumerate(zip(inputs, holds, strict=True)):
                    held[(q, index)] = given.head_ids[:length]
                shared = holds[0]
            seqs, rest, steps = [], [], []
            for q, (given, tool_results) in enumerate(inputs):
                stable = given.head_ids[: given.stable_prefix]
                reuse = 0
                if settings.share_prefix:
                    reuse = common_prefix(stable, held.get((q, index), []))
                    reuse = min(reuse, len(given.embeds) - 1)  # run at least the last position
                seqs.append(slots(q, index))
                reuse = backend.truncate(seqs[-1], reuse)  # 0: the backend starts it over
                held[(q, index)] = stable
                rest.append(given.embeds[reuse:])
                n = len(given.embeds)
                step = AgentStep(rnd, role.name, n, 0, 0, n - reuse, 0.0, 0)
                step.tool_results, step.positions_reused = tool_results, reuse
                steps.append(step)
            if shared:  # counted once, where it ran
                steps[0].positions_processed += shared
                steps[0].positions_reused -= shared
            if final or mode == "text":
                budget = settings.max_new_tokens if final else settings.text_tokens
                rngs = [item.rng for item in batch]
                outputs = _generate_batch(backend, seqs, rest, budget, settings, rngs)
                receivers = sum(role.name in a.role.receives for a in agents)
                for item, step, (tokens, text) in zip(batch, steps, outputs, strict=True):
                    step.tokens_generated = len(tokens)
                    step.positions_processed += max(len(tokens) - 1, 0)  # the last: never fed back
                    step.text = text
                    if final:
                        item.answer = text
                    else:
                        item.handed[role.name] = text
                        step.bytes_handed = len(text.encode("utf-8")) * receivers
            else:
                inner = links.inner[role.name]  # type: ignore[union-attr]
                h = np.stack([x[-1] for x in backend.get_last_hidden_batch(seqs, rest)])
                thoughts = []
                for _ in range(settings.latent_steps):
                    h = backend.decode_last_hidden_batch(seqs, np.stack([inner(x) for x in h]))
                    thoughts.append(h)
                    notify("latent", rnd, role.name)
                handed_bytes = sum(
                    settings.latent_steps * a.backend.hidden_size * 4
                    for a in agents
                    if role.name in a.role.receives
                )
                for q, (item, step) in enumerate(zip(batch, steps, strict=True)):
                    step.latent_steps = settings.latent_steps
                    step.positions_processed += settings.latent_steps
                    item.handed[role.name] = inner(np.stack([t[q] for t in thoughts]))
                    step.bytes_handed = handed_bytes
            seconds = (time.perf_counter() - began) / len(batch)
            for item, step in zip(batch, steps, strict=True):
                step.seconds = seconds
                item.steps.append(step)
    seconds = (time.perf_counter() - start) / len(batch)
    return [
        RunResult(mode, pattern.name, item.text, item.answer, seconds, item.steps) for item in batch
    ]


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
    return run_batch(mode, pattern, agents, [question], settings, links, progress, should_stop)[0]


def run_single_batch(
    pattern: Pattern, agents: list[Agent], questions: list[str], settings: Settings
) -> list[RunResult]:
    """The baseline: the final agent's model alone, with the final agent's role and tools, an
    empty `{latent}` slot and the same answer budget (`max_new_tokens`) as the loop's answer.
    Several questions go through together, as in `run_batch`."""
    if not questions:
        return []
    role, backend = agents[-1].role, agents[-1].backend
    start = time.perf_counter()
    backend.open_sequences(len(questions))
    tool_results, embeds = [], []
    for question in questions:
        tools = run_tools(role.tools, question) if role.tools else []
        prompt = render(backend.tokenizer, role, question, "\n".join(tools) or "none")
        tool_results.append(tools)
        embeds.append(text_input(backend, prompt, ""))
    rngs = [np.random.default_rng(settings.seed) for _ in questions]
    seqs = list(range(len(questions)))
    outputs = _generate_batch(backend, seqs, embeds, settings.max_new_tokens, settings, rngs)
    seconds = (time.perf_counter() - start) / len(questions)
    results = []
    for question, tools, given, (tokens, text) in zip(
        questions, tool_results, embeds, outputs, strict=True
    ):
        n, fed_back = len(given), max(len(tokens) - 1, 0)
        step = AgentStep(1, role.name, n, 0, len(tokens), n + fed_back, seconds, 0, text, tools)
        results.append(RunResult("single", pattern.name, question, text, seconds, [step]))
    return results


def run_single(
    pattern: Pattern, agents: list[Agent], question: str, settings: Settings
) -> RunResult:
    """`run_single_batch` for one question."""
    return run_single_batch(pattern, agents, [question], settings)[0]


def compare(latent: RunResult, text: RunResult) -> dict[str, float]:
    """Latent against text: the figures the paper reports."""
    reduction = 1 - latent.tokens_generated / text.tokens_generated if text.tokens_generated else 0
    return {
        "speedup": text.seconds / latent.seconds if latent.seconds else float("inf"),
        "token_reduction": reduction,
        "latent_tokens": latent.tokens_generated,
        "text_tokens": text.tokens_generated,
    }
