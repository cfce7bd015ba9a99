"""Links computed in closed form, usable with no training at all.

Inner links: ridge regression from last-hidden space to the input embedding of the next token,
rescaled so predictions have the embeddings' mean norm. Outer links: ridge regression between two
agents' input embedding spaces over tokens both vocabularies share. The linear map is then packed
into the link's form; where a form has no free linear path (the residual inner link's W3 is the
identity), the map goes through the W1/W2 layer with GELU held in its near-linear regime.

Everything here is numpy; only `samples_from_model` touches PyTorch/transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlcpatch.links.forward import layer_norm
from mlcpatch.links.linkfile import AgentInfo, LinkFile, LinkFileError
from mlcpatch.links.spec import LinkSpec, make_spec

# GELU(x) = x·Φ(x) differs from x by < 1e-8 for x >= 6; inputs are shifted by _SHIFT and scaled
# to about ±_SPREAD so they stay in that regime for all but far outliers.
_SHIFT = 8.0
_SPREAD = 1.0
# Pre-LayerNorm targets are scaled to this multiple of the residual input, so the part of the
# residual the regression cannot cancel stays small.
_LN_TARGET_GAIN = 10.0


@dataclass
class AgentSamples:
    """What the closed form needs from one agent, as raw arrays."""

    name: str
    hidden: np.ndarray  # [N, d] last hidden states (after the final norm)
    next_ids: np.ndarray  # [N] id of the token that followed each hidden state
    embedding: np.ndarray  # [V, d] input embedding matrix
    vocab: dict[str, int] | None = None  # token string -> id, to pair rows across agents
    model: str = ""

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])


def ridge_fit(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least squares y ≈ M·x + c with an L2 penalty relative to the feature scale."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc
    penalty = ridge * max(np.trace(gram) / gram.shape[0], 1e-12)
    m = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), xc.T @ yc).T
    return m, y_mean - m @ x_mean


def rescale_to_targets(
    m: np.ndarray, c: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Scale the affine map so its outputs have the targets' mean norm (ridge shrinks them)."""
    predicted = np.linalg.norm(x @ m.T + c, axis=1).mean()
    wanted = np.linalg.norm(y, axis=1).mean()
    scale = wanted / predicted if predicted > 0 else 1.0
    return m * scale, c * scale


def _pack_linear(
    m: np.ndarray, c: np.ndarray, features: np.ndarray, hidden: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """W1, b1, W2, b2 with W2·GELU(W1·x + b1) + b2 ≈ M·x + c (rank-truncated to `hidden`)."""
    out_dim, in_dim = m.shape
    # Truncate in the metric of the data (minimise E‖M·x − B·A·x‖², not ‖M − B·A‖): hidden
    # states are strongly anisotropic, and the directions they actually use must survive.
    second = features.T @ features / len(features)
    evals, evecs = np.linalg.eigh(second)
    # Directions the data never uses (e.g. the all-ones direction after a LayerNorm) are
    # dropped: weighting them by 1/sqrt(~0) would amplify float32 rounding at run time.
    keep = evals > evals.max() * 1e-6
    evals, evecs = evals[keep], evecs[:, keep]
    root = (evecs * np.sqrt(evals)) @ evecs.T
    root_inv = (evecs / np.sqrt(evals)) @ evecs.T
    u, s, vt = np.linalg.svd(m @ root, full_matrices=False)
    rank = min(hidden, len(s))
    a = vt[:rank] @ root_inv  # [rank, in]
    z = features @ a.T
    mu = z.mean(0)
    alpha = _SPREAD / (z.std(0) + 1e-12)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 1.0 / np.sqrt(in_dim), size=(hidden, in_dim))
    b1 = np.zeros(hidden)
    w2 = np.zeros((out_dim, hidden))
    w1[:rank] = alpha[:, None] * a
    b1[:rank] = _SHIFT - alpha * mu
    us = u[:, :rank] * s[:rank]
    w2[:, :rank] = us / alpha[None, :]
    # GELU(α(a·x − μ) + shift) ≈ α(a·x − μ) + shift, so W2 adds U·S·(a·x) + U·S·(shift/α − μ).
    b2 = c - us @ (_SHIFT / alpha - mu)
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2}


def _ln_output_affine(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-dimension gain/bias with gain·LN(target) + bias ≈ target, and the targets centred
    per vector: LN maps any positive multiple of those to LN(target), and, unlike LN(target),
    they are a linear function of whatever the targets are linear in."""
    normed = layer_norm(targets)
    nm, tm = normed.mean(0), targets.mean(0)
    cov = ((normed - nm) * (targets - tm)).mean(0)
    var = normed.var(0) + 1e-12
    gain = cov / var
    return gain, tm - gain * nm, targets - targets.mean(-1, keepdims=True)


def fit_inner(
    spec: LinkSpec, hidden: np.ndarray, targets: np.ndarray, ridge: float = 1e-3
) -> dict[str, np.ndarray]:
    """Parameters for an inner link from paired (last hidden, next-token embedding) rows."""
    hidden = np.asarray(hidden, np.float64)
    targets = np.asarray(targets, np.float64)
    if spec.variant == "residual":
        m, c = rescale_to_targets(*ridge_fit(hidden, targets, ridge), hidden, targets)
        # The identity residual is fixed, so the MLP carries M − I.
        params = _pack_linear(m - np.eye(spec.in_dim), c, hidden, spec.hidden)
    else:
        gain, bias, centred = _ln_output_affine(targets)
        kappa = (
            _LN_TARGET_GAIN
            * np.linalg.norm(hidden, axis=1).mean()
            / max(np.linalg.norm(centred, axis=1).mean(), 1e-12)
        )
        features = layer_norm(hidden)
        m, c = ridge_fit(features, kappa * centred - hidden, ridge)
        params = _pack_linear(m, c, features, spec.hidden)
        params.update(_identity_ln(spec, gain, bias))
    return _as_f32(params)


def fit_outer(
    spec: LinkSpec, source_rows: np.ndarray, target_rows: np.ndarray, ridge: float = 1e-3
) -> dict[str, np.ndarray]:
    """Parameters for an outer link from paired rows of two embedding spaces."""
    x = np.asarray(source_rows, np.float64)
    y = np.asarray(target_rows, np.float64)
    rng = np.random.default_rng(1)
    w1 = rng.normal(0.0, 1.0 / np.sqrt(spec.in_dim), size=(spec.hidden, spec.in_dim))
    params: dict[str, np.ndarray] = {
        "w1": w1,
        "b1": np.zeros(spec.hidden),
        # W2 starts at zero: the outer link begins as its linear bridge W3 and learns the rest.
        "w2": np.zeros((spec.out_dim, spec.hidden)),
    }
    if spec.variant == "residual":
        m, c = rescale_to_targets(*ridge_fit(x, y, ridge), x, y)
        params.update(w3=m, b2=c)
    else:
        gain, bias, centred = _ln_output_affine(y)
        m, c = ridge_fit(x, centred, ridge)
        params.update(w3=m, b2=c)
        params.update(_identity_ln(spec, gain, bias))
    return _as_f32(params)


def _identity_ln(spec: LinkSpec, gain: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "ln_in.weight": np.ones(spec.in_dim),
        "ln_in.bias": np.zeros(spec.in_dim),
        "ln_out.weight": gain,
        "ln_out.bias": bias,
    }


def _as_f32(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def paired_embedding_rows(
    source: AgentSamples, target: AgentSamples, max_rows: int = 20000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of both embedding matrices for tokens the two vocabularies share."""
    if source.vocab is not None and target.vocab is not None:
        common = sorted(set(source.vocab) & set(target.vocab))
        src_ids = np.array([source.vocab[t] for t in common], dtype=np.int64)
        tgt_ids = np.array([target.vocab[t] for t in common], dtype=np.int64)
    elif source.embedding.shape[0] == target.embedding.shape[0]:
        # Without vocabularies, equal-sized embedding tables are taken to share a tokenizer.
        src_ids = tgt_ids = np.arange(source.embedding.shape[0])
    else:
        raise LinkFileError(
            f"outer link {source.name}->{target.name}: vocabularies differ in size and none "
            "were given, so embedding rows cannot be paired"
        )
    keep = (src_ids < source.embedding.shape[0]) & (tgt_ids < target.embedding.shape[0])
    src_ids, tgt_ids = src_ids[keep], tgt_ids[keep]
    if len(src_ids) < 2:
        raise LinkFileError(f"outer link {source.name}->{target.name}: no shared tokens")
    if len(src_ids) > max_rows:
        pick = np.random.default_rng(seed).choice(len(src_ids), max_rows, replace=False)
        src_ids, tgt_ids = src_ids[pick], tgt_ids[pick]
    return source.embedding[src_ids], target.embedding[tgt_ids]


def samples_from_model(
    name: str,
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_tokens: int = 8192,
    batch_size: int = 16,
) -> AgentSamples:
    """Run a HF causal LM over texts and collect (last hidden at t, token t+1) pairs."""
    import torch

    layer = model.get_input_embeddings()
    # What the model actually feeds its first layer: Gemma scales the table by sqrt(hidden)
    # inside the embedding's forward, so the raw weight would be the wrong target space.
    embedding = layer.weight * getattr(layer, "embed_scale", 1.0)
    device = embedding.device
    rows = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    rows = [row for row in rows if len(row) >= 2]
    hidden_rows: list[np.ndarray] = []
    next_ids: list[np.ndarray] = []
    total = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            length = max(len(row) for row in chunk)
            ids = torch.zeros(len(chunk), length, dtype=torch.long)
            mask = torch.zeros(len(chunk), length, dtype=torch.long)
            for i, row in enumerate(chunk):
                ids[i, : len(row)] = torch.tensor(row)
                mask[i, : len(row)] = 1
            hidden = (
                model.base_model(
                    input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False
                )
                .last_hidden_state.float()
                .cpu()
            )
            for i, row in enumerate(chunk):
                hidden_rows.append(hidden[i, : len(row) - 1].numpy())
                next_ids.append(np.asarray(row[1:], dtype=np.int64))
                total += len(row) - 1
            if total >= max_tokens:
                break
    if not hidden_rows:
        raise LinkFileError(f"agent {name}: no text long enough to fit an inner link")
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None
    return AgentSamples(
        name=name,
        hidden=np.concatenate(hidden_rows),
        next_ids=np.concatenate(next_ids),
        embedding=embedding.detach().float().cpu().numpy(),
        vocab=vocab,
        model=str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""),
    )


HFAgent = tuple[str, Any, Any]  # (agent name, HF model, tokenizer)


def closed_form_links(
    agents: Sequence[AgentSamples | HFAgent],
    handoffs: Sequence[tuple[str, str]] | None = None,
    *,
    texts: Sequence[str] | None = None,
    specs: Sequence[LinkSpec] | None = None,
    variant: str = "residual",
    bottleneck: int | None = None,
    activation: str = "gelu",
    ridge: float = 1e-3,
) -> LinkFile:
    """Closed-form links for a system, from raw arrays or from (name, HF model, tokenizer).

    `handoffs` lists (sender, receiver) pairs needing outer links (default: consecutive agents).
    `specs` fixes the exact links to fit instead (the trainer passes its own). `texts` feed the
    HF models (default: the built-in sample data). The result is a LinkFile ready to save.
    """
    samples: list[AgentSamples] = []
    for agent in agents:
        if isinstance(agent, AgentSamples):
            samples.append(agent)
        else:
            if texts is None:
                from mlcpatch.training.data import builtin_texts

                texts = builtin_texts()
            name, model, tokenizer = agent
            samples.append(samples_from_model(name, model, tokenizer, texts))
    by_name = {s.name: s for s in samples}
    if specs is None:
        pairs = (
            list(handoffs)
            if handoffs is not None
            else [(a.name, b.name) for a, b in zip(samples, samples[1:], strict=False)]
        )
        built = [
            make_spec("inner", s.name, s.name, s.dim, s.dim, variant, bottleneck, activation)
            for s in samples
        ]
        for src, dst in pairs:
            for agent in (src, dst):
                if agent not in by_name:
                    raise LinkFileError(f"handoff {src}->{dst}: unknown agent {agent!r}")
            built.append(
                make_spec(
                    "outer",
                    src,
                    dst,
                    by_name[src].dim,
                    by_name[dst].dim,
                    variant,
                    bottleneck,
                    activation,
                )
            )
        specs = built
    tensors: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.kind == "inner":
            agent = by_name[spec.source]
            params = fit_inner(spec, agent.hidden, agent.embedding[agent.next_ids], ridge)
        else:
            rows = paired_embedding_rows(by_name[spec.source], by_name[spec.target])
            params = fit_outer(spec, *rows, ridge=ridge)
        tensors.update({f"{spec.name}.{k}": v for k, v in params.items()})
    infos = [AgentInfo(s.name, s.dim, s.model) for s in samples]
    link_file = LinkFile(infos, list(specs), tensors)
    link_file.validate("closed-form links")
    return link_file
