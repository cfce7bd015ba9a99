"""A built-in pair of tiny random models of different widths, sharing a locally trained tokenizer.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on the sample data, and the
models are random Qwen2 (hidden 32) and Llama (hidden 48) networks with fixed seeds, so a
heterogeneous system can be trained anywhere in seconds.
"""

from __future__ import annotations

import functools
import pathlib
from typing import Any

TINY_MODELS = ("tiny:qwen2", "tiny:llama")
# Much wider than the usual 0.02: a random net that small is otherwise nearly indifferent to its
# inputs (logits within ±1), and no link could move its output enough to learn anything.
INIT_RANGE = 0.2
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mlcpatch.training.data import builtin_texts
    from mlcpatch.training.system import DEFAULT_ROLES

    corpus = builtin_texts() + list(DEFAULT_ROLES.values()) + [" ".join(map(str, range(100)))]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = _CHATML
    return tokenizer


def tiny_config(name: str, vocab_size: int) -> Any:
    from transformers import LlamaConfig, Qwen2Config

    common = {
        "vocab_size": vocab_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "initializer_range": INIT_RANGE,
    }
    if name == "tiny:qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common)
    if name == "tiny:llama":
        return LlamaConfig(hidden_size=48, intermediate_size=96, num_key_value_heads=4, **common)
    raise ValueError(f"unknown tiny model {name!r}; choose from {TINY_MODELS}")


def tiny_model(name: str, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) for a built-in tiny model; same seed, same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = tiny_config(name, len(tokenizer))
    # Each tiny model has its own stream so adding one never changes another's weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + TINY_MODELS.index(name))
        model = AutoModelForCausalLM.from_config(config)
    return model, tokenizer


def write_tiny_model(name: str, folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Save a tiny model as a normal HF folder (to exercise loading by path)."""
    model, tokenizer = tiny_model(name, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
