"""A tiny random model with a real tokenizer, written locally: the build's no-download default.

``mlcpatch build --arch qwen2 --model tiny-random`` builds from this, so a fresh machine can run
the whole pipeline without the Hugging Face hub. The weights are random (the text it generates
is gibberish); the tokenizer is a byte-level BPE trained here on a fixed text, with a ChatML
chat template.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from mlcpatch.models.registry import get_arch

TINY_SOURCE = "tiny-random"
TINY_VERSION = 1  # bump when the generated files change, so cached builds are not reused
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = """
The quick brown fox jumps over the lazy dog. A small model thinks in vectors before it speaks.
Agents pass hidden states to each other, round after round, and the last one writes the answer.
What is two plus two? Two plus two is four. Hello, how are you today? I am fine, thank you.
Write a short poem about the sea. The sea is wide and deep and blue, it sings all night to you.
system user assistant question answer reason think step latent hidden state model token
0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } . , ; : ! ? ' "
"""


def _train_tokenizer(vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 8, trainer=trainer)
    return tokenizer


def write_tokenizer(folder: pathlib.Path, vocab_size: int) -> Any:
    """Save a fast tokenizer (tokenizer.json + config with chat template) into ``folder``."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_size),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(folder))
    return fast


def write_tiny_model(
    folder: pathlib.Path,
    arch: str,
    seed: int = 0,
    config_overrides: dict[str, Any] | None = None,
    safe_serialization: bool = True,
    perturb_norms: bool = False,
) -> pathlib.Path:
    """Write config.json, the weights and the tokenizer for a tiny random ``arch`` model.

    ``config_overrides`` changes the registry's tiny config (tests use it for tied heads, GQA
    ratios, RoPE scaling); ``safe_serialization=False`` writes pytorch_model.bin instead.
    ``perturb_norms`` adds noise to every norm weight: HF initialises them to a constant (ones,
    or zeros for Gemma's 1 + weight), which would hide a norm applied with the wrong scale.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config_dict = {**get_arch(arch).tiny_config(), **(config_overrides or {})}
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = write_tokenizer(folder, vocab_size=config_dict["vocab_size"] - 16)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config_dict = {**config_dict, "eos_token_id": eos, "pad_token_id": pad, "bos_token_id": None}
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    torch.manual_seed(seed)
    # A wider init than HF's 0.02 spreads the logits, so greedy decoding has no near-ties that
    # rounding could flip when tests compare token streams.
    config.initializer_range = 0.2
    model = AutoModelForCausalLM.from_config(config).eval()
    if perturb_norms:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "norm" in name:
                    param.add_(torch.randn_like(param) * 0.2)
    if safe_serialization:
        model.save_pretrained(str(folder))
    else:  # transformers 5 only writes safetensors; the legacy layout is written by hand
        model.config.save_pretrained(str(folder))
        model.generation_config.save_pretrained(str(folder))
        state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
        torch.save(state, folder / "pytorch_model.bin")
    (folder / "mlcpatch-tiny.json").write_text(
        json.dumps({"arch": arch, "seed": seed, "version": TINY_VERSION})
    )
    return folder
