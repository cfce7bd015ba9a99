"""The latent loop of docs/DESIGN.md, differentiable: the module the trainer optimises.

Only `links` is a registered submodule, so optimisers, DDP and checkpoints see link parameters
and nothing else; the frozen backbones hang off plain attributes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from mlcpatch.links.spec import inner_link_name, outer_link_name
from mlcpatch.links.torch_module import LinkSet
from mlcpatch.loop.patterns import AgentRole
from mlcpatch.training.backbones import Backbone
from mlcpatch.training.prompts import PromptCache, answer_ids, training_text
from mlcpatch.training.system import SystemConfig


@dataclass
class Agent:
    name: str
    backbone: Backbone
    role: AgentRole


def pad_left(rows: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack [T_i, d] rows into [B, T, d] with left padding, plus the attention mask."""
    length = max(row.shape[0] for row in rows)
    first = rows[0]
    embeds = first.new_zeros(len(rows), length, first.shape[1])
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=first.device)
    for i, row in enumerate(rows):
        embeds[i, length - row.shape[0] :] = row
        mask[i, length - row.shape[0] :] = 1
    return embeds, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    # Explicit positions: with left padding, every row's first real token must be position 0.
    return (mask.cumsum(-1) - 1).clamp(min=0)


class LatentSystem(nn.Module):
    """Agents in pattern order for R rounds, each thinking m latent steps and handing over."""

    def __init__(
        self,
        system: SystemConfig,
        agents: dict[str, Agent],
        links: LinkSet,
        checkpointing: bool = False,
        max_length: int = 256,
        mse_weight: float = 0.1,
    ) -> None:
        super().__init__()
        self.links = links
        self.system = system
        self.agents = agents
        self.checkpointing = checkpointing
        self.max_length = max_length
        self.mse_weight = mse_weight
        self.prompts = PromptCache()

    def forward(self, mode: str, questions: list[str], answers: list[str]) -> torch.Tensor:
        """One entry point, so DDP sees every objective in a single forward per step:
        'outer' (final-answer cross-entropy) or 'inner' (stage 1, summed over agents)."""
        if mode == "outer":
            return self.outer_loss(questions, answers)
        if mode == "inner":
            losses = [
                self.inner_loss(name, self.inner_texts(name, questions, answers))
                for name in dict.fromkeys(self.system.pattern)
            ]
            return torch.stack(losses).sum()
        raise ValueError(f"unknown mode {mode!r}")

    def inner_texts(self, name: str, questions: list[str], answers: list[str]) -> list[str]:
        agent = self.agents[name]
        return [
            training_text(agent.backbone.tokenizer, agent.role, q, a)
            for q, a in zip(questions, answers, strict=True)
        ]

    # -- building inputs ---------------------------------------------------------------------

    def _prompt_rows(
        self, agent: Agent, questions: list[str], handed: torch.Tensor | None
    ) -> list[torch.Tensor]:
        backbone = agent.backbone
        rows = []
        for i, question in enumerate(questions):
            parts = self.prompts.get(agent.name, backbone.tokenizer, agent.role, question)
            ids = torch.tensor(parts.prefix + parts.suffix, device=backbone.device)
            embedded = backbone.embed(ids)
            pieces = [embedded[: len(parts.prefix)]]
            if handed is not None:
                pieces.append(handed[i].to(embedded.dtype))
            pieces.append(embedded[len(parts.prefix) :])
            rows.append(torch.cat(pieces))
        return rows

    # -- the loop ------------------------------------------------------------------------------

    def _latent_turn(
        self, name: str, questions: list[str], handed: torch.Tensor | None
    ) -> torch.Tensor:
        """Steps 1-3 of the latent loop for one agent: returns its latent thoughts [B, m, d]."""
        agent = self.agents[name]
        base = agent.backbone.model.base_model
        embeds, mask = pad_left(self._prompt_rows(agent, questions, handed))
        pos = positions(mask)
        out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
        cache, h = out.past_key_values, out.last_hidden_state[:, -1]
        inner = self.links[inner_link_name(name)]
        ones = mask.new_ones(mask.shape[0], 1)
        thoughts = []
        for _ in range(self.system.latent_steps):
            step_input = inner(h).to(embeds.dtype)[:, None]
            mask = torch.cat([mask, ones], 1)
            pos = pos[:, -1:] + 1
            out = base(
                inputs_embeds=step_input,
                attention_mask=mask,
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
            )
            cache, h = out.past_key_values, out.last_hidden_state[:, -1]
            thoughts.append(h)
        return torch.stack(thoughts, 1)

    def handover_to_final(self, questions: list[str]) -> torch.Tensor | None:
        """Run every turn but the last, as the loop does; return what the final agent
        receives [B, k·m, d_final] (its senders' hand-offs concatenated in its `receives`
        order), or None when none of them has spoken."""
        turns = self.system.turns()
        handed: dict[str, torch.Tensor] = {}  # sender -> inner(its latest thoughts)
        for name in turns[:-1]:
            incoming = self._incoming(name, handed)
            if self.checkpointing and torch.is_grad_enabled():
                # Recompute this turn in backward instead of keeping its activations.
                thoughts = checkpoint(
                    self._latent_turn, name, questions, incoming, use_reentrant=False
                )
            else:
                thoughts = self._latent_turn(name, questions, incoming)
            handed[name] = self.links[inner_link_name(name)](thoughts)
        return self._incoming(turns[-1], handed)

    def _incoming(self, name: str, handed: dict[str, torch.Tensor]) -> torch.Tensor | None:
        senders = [s for s in self.agents[name].role.receives if s in handed]
        if not senders:
            return None
        return torch.cat([self.links[outer_link_name(s, name)](handed[s]) for s in senders], 1)

    def outer_loss(self, questions: list[str], answers: list[str]) -> torch.Tensor:
        """Cross-entropy of the final agent on the answer tokens, teacher forced."""
        handed = self.handover_to_final(questions)
        agent = self.agents[self.system.turns()[-1]]
        backbone = agent.backbone
        eos = sorted(backbone.eos_ids())
        prompt_rows = self._prompt_rows(agent, questions, handed)
        targets = [
            torch.tensor(answer_ids(backbone.tokenizer, a, eos[0] if eos else None))
            for a in answers
        ]
        rows = [
            torch.cat([row, backbone.embed(t.to(backbone.device))])
            for row, t in zip(prompt_rows, targets, strict=True)
        ]
        embeds, mask = pad_left(rows)
        hidden = backbone.model.base_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions(mask), use_cache=False
        ).last_hidden_state
        length = embeds.shape[1]
        batch_index, time_index = [], []
        for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
            start = length - row.shape[0] + (row.shape[0] - target.shape[0]) - 1
            batch_index += [i] * target.shape[0]
            time_index += range(start, start + target.shape[0])
        # LM head only where an answer token is predicted: a full-vocabulary projection of
        # every prompt position would dominate memory on real models.
        picked = hidden[torch.tensor(batch_index), torch.tensor(time_index)]
        logits = backbone.model.get_output_embeddings()(picked).float()
        return F.cross_entropy(logits, torch.cat(targets).to(logits.device))

    # -- stage 1 -------------------------------------------------------------------------------

    def _text_batch(self, agent: Agent, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = agent.backbone.tokenizer
        ids = [tokenizer(t, add_special_tokens=False).input_ids[: self.max_length] for t in texts]
        length = max(len(row) for row in ids)
        batch = torch.zeros(len(ids), length, dtype=torch.long)
        mask = torch.zeros(len(ids), length, dtype=torch.long)
        for i, row in enumerate(ids):
            batch[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return batch.to(agent.backbone.device), mask.to(agent.backbone.device)

    def inner_pairs(
        self, name: str, texts: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prediction of the inner link, next-token embedding, validity mask) per position."""
        agent = self.agents[name]
        ids, mask = self._text_batch(agent, texts)
        with torch.no_grad():
            hidden = agent.backbone.model.base_model(
                input_ids=ids, attention_mask=mask, use_cache=False
            ).last_hidden_state
            targets = agent.backbone.embed(ids)[:, 1:].float()
        predicted = self.links[inner_link_name(name)](hidden[:, :-1]).float()
        valid = (mask[:, 1:] * mask[:, :-1]).float()
        return predicted, targets, valid

    def inner_loss(self, name: str, texts: list[str]) -> torch.Tensor:
        """1 − cosine to the next token's embedding, plus a small relative MSE (for scale)."""
        predicted, targets, valid = self.inner_pairs(name, texts)
        count = valid.sum().clamp(min=1.0)
        cosine = 1.0 - F.cosine_similarity(predicted, targets, dim=-1)
        # Relative to the targets' mean square, so the weight means the same for every model.
        scale = (targets.square().mean(-1) * valid).sum() / count
        mse = (predicted - targets).square().mean(-1) / scale.clamp(min=1e-12)
        return ((cosine + self.mse_weight * mse) * valid).sum() / count

    @torch.no_grad()
    def inner_cosine(self, name: str, texts: list[str]) -> float:
        predicted, targets, valid = self.inner_pairs(name, texts)
        cosine = F.cosine_similarity(predicted, targets, dim=-1)
        return float((cosine * valid).sum() / valid.sum().clamp(min=1.0))

    # -- decoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, questions: list[str], max_new_tokens: int = 16) -> list[str]:
        """Greedy text from the final agent after the latent rounds (step 5 of the loop)."""
        handed = self.handover_to_final(questions)
        agent = self.agents[self.system.turns()[-1]]
        backbone = agent.backbone
        base, head = backbone.model.base_model, backbone.model.get_output_embeddings()
        embeds, mask = pad_left(self._prompt_rows(agent, questions, handed))
        pos = positions(mask)
        out = base(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=True)
        eos = torch.tensor(sorted(backbone.eos_ids()) or [-1], device=mask.device)
        done = torch.zeros(len(questions), dtype=torch.bool, device=mask.device)
        produced: list[list[int]] = [[] for _ in questions]
        for _ in range(max_new_tokens):
            token = head(out.last_hidden_state[:, -1]).argmax(-1)
            finished = torch.isin(token, eos)
            for i in range(len(questions)):
                if not done[i] and not finished[i]:
                    produced[i].append(int(token[i]))
            done |= finished
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
            pos = pos[:, -1:] + 1
            out = base(
                inputs_embeds=backbone.embed(token)[:, None],
                attention_mask=mask,
                position_ids=pos,
                past_key_values=out.past_key_values,
                use_cache=True,
            )
        return [backbone.tokenizer.decode(ids, skip_special_tokens=True) for ids in produced]
