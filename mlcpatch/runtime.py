"""Running an artifact folder on the CPU from Python.

The verbs mirror the JS engine's (see docs/DESIGN.md): ``embed``, ``prefill``, ``decode``,
``get_last_hidden``, ``decode_last_hidden``, ``reset`` and ``generate``. They act on the selected
KV-cache sequence; every call that runs the model appends to it (``get_last_hidden`` included,
exactly like ``prefill``), and ``reset`` starts a fresh one.

The KV cache can also hold several sequences (``open_sequences``): ``select`` picks the one the
verbs act on, ``truncate`` drops a sequence's last positions (a prompt prefix is kept and reused),
and the ``*_batch`` verbs run several sequences in one forward (a ragged prefill, a batched
decode). With one sequence the batch verbs are the plain verbs, call for call.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from mlcpatch.artifact import (
    CHAT_CONFIG,
    MANIFEST,
    TENSOR_CACHE,
    ArtifactError,
    inside,
    read_manifest,
    require_listed,
    verify_artifact,
)
from mlcpatch.cpu_features import check_library_cpu

PAGE_SIZE = 16


@dataclasses.dataclass
class GenerationResult:
    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    stopped_by: str  # "stop token" or "max_new_tokens"


def _read_json(path: pathlib.Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{path.parent}: missing {path.name} (not an artifact folder?)")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from None


def _shards(folder: pathlib.Path, cache: Any) -> list[dict[str, Any]]:
    """tensor-cache.json's shard records, each with a `dataPath` inside the folder."""
    records = cache.get("records") if isinstance(cache, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ArtifactError(f"{folder}/tensor-cache.json: no list of shard records")
    for shard in records:
        inside(folder, shard.get("dataPath"), "weight shard")
    return records


def _load_params(
    folder: pathlib.Path, shards: list[dict[str, Any]], names: list[str], device: Any
) -> list[Any]:
    import tvm

    arrays: dict[str, Any] = {}
    for shard in shards:
        raw = (folder / shard["dataPath"]).read_bytes()
        if len(raw) != shard["nbytes"]:
            raise ArtifactError(f"{folder / shard['dataPath']}: truncated shard")
        for rec in shard["records"]:
            if rec["format"] != "raw":
                raise ArtifactError(f"{rec['name']}: unsupported record format {rec['format']}")
            begin = rec["byteOffset"]
            data = np.frombuffer(raw[begin : begin + rec["nbytes"]], dtype=rec["dtype"])
            arrays[rec["name"]] = tvm.runtime.tensor(data.reshape(rec["shape"]), device)
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ArtifactError(f"tensor-cache.json lacks parameter(s): {', '.join(missing[:5])}")
    return [arrays[n] for n in names]


class _Functions(dict):
    """The library's functions, looked up on first use: a library built without the patch
    (from an unpatched definition, or by MLC-LLM) still serves prefill/decode."""

    def __init__(self, vm: Any, folder: pathlib.Path) -> None:
        super().__init__()
        self._vm, self._folder = vm, folder

    def __missing__(self, name: str) -> Any:
        try:
            self[name] = self._vm[name]
        except (AttributeError, KeyError, RuntimeError, ValueError) as err:
            hint = " (was it built unpatched?)" if "hidden" in name else ""
            raise ArtifactError(f"{self._folder}: library has no function {name}{hint}") from err
        return self[name]


class Runtime:
    """A compiled model, its weights, its KV-cache sequences and (lazily) its tokenizer."""

    def __init__(
        self,
        folder: str | pathlib.Path,
        *,
        verify: bool = True,
        context_window_size: int | None = None,
        prefill_chunk_size: int | None = None,
    ) -> None:
        import tvm
        from tvm import relax
        from tvm.runtime import ShapeTuple

        from mlcpatch.threads import configure_threads

        self.threads = configure_threads()  # before the first parallel kernel runs
        self.folder = pathlib.Path(folder)
        if not self.folder.is_dir():
            raise ArtifactError(f"{self.folder}: no such artifact folder")
        self.manifest = read_manifest(self.folder)
        self.config = _read_json(self.folder / CHAT_CONFIG)
        lib_name = (self.config.get("model_lib") or {}).get("llvm")
        if lib_name is None:
            raise ArtifactError(f"{self.folder}: no CPU (llvm) library in this artifact")
        shards = _shards(self.folder, _read_json(self.folder / TENSOR_CACHE))
        # Everything opened below is named by the folder's own files: keep each inside it,
        # and listed, so the hashes cover all of it (the library is native code).
        lib_path = inside(self.folder, lib_name, "library")
        needed = [CHAT_CONFIG, TENSOR_CACHE, lib_name, *(s["dataPath"] for s in shards)]
        require_listed(self.folder, self.manifest, needed)
        if verify:
            verify_artifact(self.folder, self.manifest)
        # Before loading: a library using instructions this CPU lacks dies of SIGILL.
        check_library_cpu(self.folder, (self.manifest.options or {}).get("cpu"))
        param_names = self.manifest.param_names
        if not param_names:
            raise ArtifactError(f"{self.folder}/{MANIFEST}: no param_names list")
        self.device = tvm.cpu()
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib_path)), self.device)
        self._params = _load_params(self.folder, shards, param_names, self.device)
        model_config = self.config["model_config"]
        self.dtype: str = model_config["dtype"]
        self.hidden_size: int = int(model_config["hidden_size"])
        self.vocab_size: int = int(model_config["vocab_size"])
        # Both are runtime arguments of the KV cache, so they may differ from the build's.
        self.prefill_chunk: int = int(prefill_chunk_size or self.config["prefill_chunk_size"])
        self.context_window: int = int(context_window_size or self.config["context_window_size"])
        # Models with sliding-window attention are exact only within limits their build records
        # (models/config_base.py): a context within the window, or prefill chunks shorter than it.
        settings = {
            "context_window_size": self.context_window,
            "prefill_chunk_size": self.prefill_chunk,
        }
        for key, limit in model_config.get("runtime_limits", {}).items():
            value = settings.get(key)
            if value is not None and value > int(limit):
                raise ArtifactError(
                    f"{self.folder}: {key} {value} is above this model's limit of {limit} "
                    "(sliding-window attention is exact only within it)"
                )
        # TVM's fork of a sequence gave wrong hidden states where sliding-window layers use the
        # cache's window kernels (tiny Gemma 3, prompts past the window: off by up to 3), which
        # is when a build limits the prefill chunk (config_base.py). Such models do not fork.
        self.can_fork = "prefill_chunk_size" not in model_config.get("runtime_limits", {})
        self._shape = ShapeTuple
        self._f = _Functions(self._vm, self.folder)
        self._kv_add = tvm.get_global_func("vm.builtin.kv_state_add_sequence")
        self._kv_clear = tvm.get_global_func("vm.builtin.kv_state_clear")
        self._kv_begin = tvm.get_global_func("vm.builtin.kv_state_begin_forward")
        self._kv_end = tvm.get_global_func("vm.builtin.kv_state_end_forward")
        self._kv_remove = tvm.get_global_func("vm.builtin.kv_state_remove_sequence")
        self._kv_popn = tvm.get_global_func("vm.builtin.kv_state_popn")
        self._kv_fork = tvm.get_global_func("vm.builtin.kv_state_fork_sequence")
        self._capacity = 0  # sequences the KV cache was made for
        self._kv: Any = None
        self._lengths: dict[int, int] = {}  # sequence id -> positions it holds
        self._seq = 0  # the sequence the verbs act on
        self.open_sequences(1)
        self._tokenizer: Any = None

    @staticmethod
    def functions() -> tuple[str, ...]:
        return (
            "embed",
            "prefill",
            "decode",
            "get_last_hidden",
            "decode_last_hidden",
            "create_paged_kv_cache",
        )

    # --- sequence state -------------------------------------------------------------------
    def _create_cache(self, sequences: int) -> Any:
        shape = self._shape
        # Every sequence may grow to the context window; pages are taken as positions arrive.
        return self._f["create_paged_kv_cache"](
            shape([sequences]),
            shape([self.context_window * sequences]),
            shape([self.prefill_chunk]),
            shape([PAGE_SIZE]),
            shape([0]),
        )

    def open_sequences(self, count: int) -> None:
        """Drop every sequence; then sequences 0..count-1 exist, empty, and 0 is selected.

        The KV cache is made anew when it was made for fewer sequences."""
        if count < 1:
            raise ValueError("open at least one sequence")
        if count > self._capacity:
            self._kv = None  # free the old cache's pages first
            self._kv = self._create_cache(count)
            self._capacity = count
        else:
            self._kv_clear(self._kv)
        for seq in range(count):
            self._kv_add(self._kv, seq)
        self._lengths = dict.fromkeys(range(count), 0)
        self._seq = 0

    def reset(self) -> None:
        """Drop every sequence and start one empty one (sequence 0, selected)."""
        self.open_sequences(1)

    def select(self, seq: int) -> None:
        """Make ``seq`` the sequence the verbs act on."""
        self._check_seq(seq)
        self._seq = seq

    def truncate(self, seq: int, length: int) -> int:
        """Keep the first ``length`` positions of ``seq`` and drop the rest; the length kept."""
        current = self._check_seq(seq)
        if not 0 <= length <= current:
            raise ValueError(f"sequence {seq} holds {current} positions; cannot keep {length}")
        if length == 0:
            self._kv_remove(self._kv, seq)
            self._kv_add(self._kv, seq)
        elif length < current:
            self._kv_popn(self._kv, seq, current - length)
        self._lengths[seq] = length
        return length

    def fork(self, parent: int, child: int, length: int) -> int:
        """Make ``child`` hold the first ``length`` positions of ``parent`` (dropping what it
        held); the length it holds: 0 where this model cannot fork (``can_fork``). The cache
        shares the parent's full pages with the child (copying only a partly used one), so the
        prefix is neither computed nor stored twice."""
        held = self._check_seq(parent)
        self._check_seq(child)
        if parent == child:
            raise ValueError(f"cannot fork sequence {parent} into itself")
        if not 0 <= length <= held:
            raise ValueError(f"sequence {parent} holds {held} positions; cannot fork {length}")
        self._kv_remove(self._kv, child)
        if length == 0 or not self.can_fork:
            self._kv_add(self._kv, child)
            length = 0
        else:
            self._kv_fork(self._kv, parent, child, length)
        self._lengths[child] = length
        return length

    def length(self, seq: int) -> int:
        """Positions sequence ``seq`` holds."""
        return self._check_seq(seq)

    @property
    def position(self) -> int:
        """Positions the selected sequence holds."""
        return self._lengths[self._seq]

    def _check_seq(self, seq: int) -> int:
        if seq not in self._lengths:
            raise ValueError(f"no sequence {seq} (open {len(self._lengths)} with open_sequences)")
        return self._lengths[seq]

    def _forward(
        self, name: str, seqs: list[int], pieces: list[np.ndarray], *extra: Any
    ) -> np.ndarray:
        """One forward of `name` appending pieces[i] to seqs[i]; its first output as numpy.

        Pieces go in as one [1, total, d] input (a ragged batch), or [b, 1, d] for batch_decode."""
        import tvm

        lengths = [int(p.shape[0]) for p in pieces]
        for seq, n in zip(seqs, lengths, strict=True):
            reach = self._check_seq(seq) + n
            if reach > self.context_window:
                raise ArtifactError(
                    f"sequence would reach {reach} positions, beyond the context window "
                    f"({self.context_window}); call reset()"
                )
        joined = np.concatenate(pieces)
        joined = joined[:, None] if name == "batch_decode" else joined[None]
        data = tvm.runtime.tensor(np.ascontiguousarray(joined, dtype=self.dtype), self.device)
        self._kv_begin(self._kv, self._shape(seqs), self._shape(lengths))
        args = [tvm.runtime.tensor(np.asarray(e, np.int32), self.device) for e in extra]
        out = self._f[name](data, *args, self._kv, self._params)
        self._kv_end(self._kv)
        for seq, n in zip(seqs, lengths, strict=True):
            self._lengths[seq] += n
        return out[0].numpy()

    def _run(self, name: str, embeds: np.ndarray) -> Any:
        return self._forward(name, [self._seq], [embeds])

    def _check_embeds(self, embeds: np.ndarray, single: bool) -> np.ndarray:
        embeds = np.asarray(embeds)
        if single:
            embeds = embeds.reshape(1, -1) if embeds.ndim == 1 else embeds
            if embeds.shape[0] != 1:
                raise ValueError(f"expected one embedding, got shape {embeds.shape}")
        if embeds.ndim != 2 or embeds.shape[1] != self.hidden_size or embeds.shape[0] == 0:
            raise ValueError(f"expected embeddings [n, {self.hidden_size}], got {embeds.shape}")
        return embeds

    # --- the verbs --------------------------------------------------------------------------
    def embed(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """Token ids -> input embeddings [n, hidden] (float32)."""
        import tvm

        arr = np.asarray(ids, dtype=np.int32).reshape(-1)
        if arr.size == 0 or arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"token ids must be non-empty and in [0, {self.vocab_size})")
        out = self._f["embed"](tvm.runtime.tensor(arr, self.device), self._params)
        return out.numpy().astype(np.float32)

    def prefill(self, embeds: np.ndarray) -> np.ndarray:
        """Append positions to the sequence; logits [vocab] of the last one."""
        embeds = self._check_embeds(embeds, single=False)
        logits = None
        for start in range(0, embeds.shape[0], self.prefill_chunk):
            logits = self._run("prefill", embeds[start : start + self.prefill_chunk])
        return logits.reshape(-1, self.vocab_size)[-1].astype(np.float32)

    def decode(self, embed: np.ndarray) -> np.ndarray:
        """Append one position; its logits [vocab]."""
        embed = self._check_embeds(embed, single=True)
        return self._run("decode", embed).reshape(self.vocab_size).astype(np.float32)

    def get_last_hidden(self, embeds: np.ndarray) -> np.ndarray:
        """Append positions (writes the KV cache like prefill); final-norm hidden [n, hidden]."""
        embeds = self._check_embeds(embeds, single=False)
        parts = [
            self._run("get_last_hidden", embeds[start : start + self.prefill_chunk])
            for start in range(0, embeds.shape[0], self.prefill_chunk)
        ]
        return np.concatenate([p.reshape(-1, self.hidden_size) for p in parts]).astype(np.float32)

    def decode_last_hidden(self, embed: np.ndarray) -> np.ndarray:
        """Append one position; its final-norm hidden state [hidden]."""
        embed = self._check_embeds(embed, single=True)
        out = self._run("decode_last_hidden", embed)
        return out.reshape(self.hidden_size).astype(np.float32)

    # --- several sequences in one forward ------------------------------------------------------
    def _check_batch(self, seqs: list[int], count: int) -> None:
        if len(seqs) != count or len(set(seqs)) != len(seqs) or not seqs:
            raise ValueError("give one input per sequence, each sequence once")
        for seq in seqs:
            self._check_seq(seq)

    def _chunks(self, lengths: list[int]) -> list[list[tuple[int, int, int]]]:
        """Forwards of at most prefill_chunk positions in all: (input index, start, end) each."""
        done = [0] * len(lengths)
        plan = []
        while any(d < n for d, n in zip(done, lengths, strict=True)):
            budget, part = self.prefill_chunk, []
            for index, n in enumerate(lengths):
                take = min(n - done[index], budget)
                if take > 0:
                    part.append((index, done[index], done[index] + take))
                    done[index] += take
                    budget -= take
                if budget == 0:
                    break
            plan.append(part)
        return plan

    def prefill_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> np.ndarray:
        """``prefill`` of embeds[i] on seqs[i], all in ragged forwards; logits [b, vocab]."""
        self._check_batch(seqs, len(embeds))
        embeds = [self._check_embeds(e, single=False) for e in embeds]
        if len(seqs) == 1:
            self.select(seqs[0])
            return self.prefill(embeds[0])[None]
        logits = np.zeros((len(seqs), self.vocab_size), np.float32)
        for part in self._chunks([e.shape[0] for e in embeds]):
            pieces = [embeds[i][a:b] for i, a, b in part]
            ends = np.cumsum([p.shape[0] for p in pieces]) - 1
            out = self._forward("batch_prefill", [seqs[i] for i, _, _ in part], pieces, ends)
            out = out.reshape(len(part), self.vocab_size)
            for row, (i, _, b) in enumerate(part):
                if b == embeds[i].shape[0]:
                    logits[i] = out[row]
        return logits

    def decode_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        """``decode`` of embeds[i] [hidden] on seqs[i], one forward; logits [b, vocab]."""
        embeds = np.asarray(embeds).reshape(len(seqs), -1)
        self._check_batch(seqs, embeds.shape[0])
        self._check_embeds(embeds, single=False)
        if len(seqs) == 1:
            self.select(seqs[0])
            return self.decode(embeds)[None]
        out = self._forward("batch_decode", list(seqs), list(embeds[:, None]))
        return out.reshape(len(seqs), self.vocab_size).astype(np.float32)

    def get_last_hidden_batch(self, seqs: list[int], embeds: list[np.ndarray]) -> list[np.ndarray]:
        """``get_last_hidden`` of embeds[i] on seqs[i], in ragged forwards; [n_i, hidden] each."""
        self._check_batch(seqs, len(embeds))
        embeds = [self._check_embeds(e, single=False) for e in embeds]
        if len(seqs) == 1:
            self.select(seqs[0])
            return [self.get_last_hidden(embeds[0])]
        parts: list[list[np.ndarray]] = [[] for _ in seqs]
        for part in self._chunks([e.shape[0] for e in embeds]):
            pieces = [embeds[i][a:b] for i, a, b in part]
            out = self._forward("get_last_hidden", [seqs[i] for i, _, _ in part], pieces)
            out = out.reshape(-1, self.hidden_size)
            start = 0
            for (i, _, _), piece in zip(part, pieces, strict=True):
                parts[i].append(out[start : start + piece.shape[0]])
                start += piece.shape[0]
        return [np.concatenate(p).astype(np.float32) for p in parts]

    def decode_last_hidden_batch(self, seqs: list[int], embeds: np.ndarray) -> np.ndarray:
        """``decode_last_hidden`` of embeds[i] [hidden] on seqs[i], one forward; [b, hidden]."""
        embeds = np.asarray(embeds).reshape(len(seqs), -1)
        self._check_batch(seqs, embeds.shape[0])
        self._check_embeds(embeds, single=False)
        if len(seqs) == 1:
            self.select(seqs[0])
            return self.decode_last_hidden(embeds)[None]
        # get_last_hidden over a ragged batch of one position per sequence.
        out = self._forward("get_last_hidden", list(seqs), list(embeds[:, None]))
        return out.reshape(len(seqs), self.hidden_size).astype(np.float32)

    # --- text -------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        return self._tokenizer

    def encode_chat(self, prompt: str) -> list[int]:
        """Token ids of ``prompt`` as one user turn, with the assistant turn opened."""
        tok = self.tokenizer
        if tok.chat_template:
            text = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok(prompt)["input_ids"])

    def default_stop_ids(self) -> list[int]:
        ids = set(self.config.get("eos_token_id") or [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return sorted(ids)

    def generate(
        self,
        prompt: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        greedy: bool = False,
        seed: int | None = None,
        prompt_ids: list[int] | None = None,
    ) -> GenerationResult:
        """Chat-templated generation from a fresh sequence.

        ``prompt_ids`` skips the chat template; ``stop_token_ids=[]`` never stops early.
        """
        if (prompt is None) == (prompt_ids is None):
            raise ValueError("pass exactly one of prompt and prompt_ids")
        ids = list(prompt_ids) if prompt_ids is not None else self.encode_chat(prompt or "")
        stops = set(self.default_stop_ids() if stop_token_ids is None else stop_token_ids)
        rng = np.random.default_rng(seed)
        self.reset()
        logits = self.prefill(self.embed(ids))
        output: list[int] = []
        stopped_by = "max_new_tokens"
        for step in range(max_new_tokens):
            token = sample(logits, temperature, top_p, greedy, rng)
            output.append(token)
            if token in stops:
                stopped_by = "stop token"
                break
            if step + 1 < max_new_tokens:
                logits = self.decode(self.embed([token]))
        text_ids = [t for t in output if t not in stops]
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
        return GenerationResult(ids, output, text, stopped_by)


def sample(
    logits: np.ndarray,
    temperature: float,
    top_p: float,
    greedy: bool,
    rng: np.random.Generator,
) -> int:
    """Next token: argmax when greedy (or temperature 0), else nucleus sampling."""
    if greedy or temperature <= 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p) + 1)]
    kept = probs[keep] / probs[keep].sum()
    return int(rng.choice(keep, p=kept))
