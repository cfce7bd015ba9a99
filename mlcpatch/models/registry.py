"""The built-in architectures: where each model definition lives and how HF weights map onto it.

Adding an architecture = one folder with ``<arch>_model.py`` + one ``ArchInfo`` entry below +
its recipe, ``recipes/<arch>.toml``: per-arch defaults (model, quantization, conversation
template...) are read from the recipe only, so the build's options and this registry cannot
disagree. This module imports neither tvm nor torch: ``mlcpatch archs`` reads it and must stay
fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import pathlib
from collections.abc import Callable
from typing import Any

from mlcpatch.build.recipe import Recipe, load_recipe, recipe_path
from mlcpatch.errors import MlcpatchError

MODELS_DIR = pathlib.Path(__file__).resolve().parent


@dataclasses.dataclass(frozen=True)
class FusedWeight:
    """One of our parameters built by concatenating several HF tensors along axis 0.

    Both sides are name suffixes: ``self_attn.c_attn.weight`` matches every layer.
    """

    target: str
    sources: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ArchInfo:
    """Everything the build, the patcher and the runtime need to know about one architecture."""

    name: str
    model_file: str  # relative to mlcpatch/models
    model_class: str  # the LM-head class (the one with prefill/decode/get_default_spec)
    config_class: str
    hf_model_types: tuple[str, ...]
    fused_weights: tuple[FusedWeight, ...]
    # HF tensors that exist in some checkpoints but have no counterpart in our definition.
    ignored_weight_suffixes: tuple[str, ...]
    tiny_config: Callable[[], dict[str, Any]]

    @property
    def recipe(self) -> Recipe:
        recipe = load_recipe(self.name)
        if recipe is None:
            raise FileNotFoundError(f"{recipe_path(self.name)}: the {self.name} recipe is missing")
        return recipe

    @property
    def default_conv_template(self) -> str:
        template = self.recipe.conv_template
        if template is None:
            raise ValueError(f"{recipe_path(self.name)} names no conv_template")
        return template

    @property
    def module_name(self) -> str:
        return "mlcpatch.models." + self.model_file.removesuffix(".py").replace("/", ".")

    def load_classes(self) -> tuple[type, type]:
        """(config class, model class) of the pristine built-in definition; imports tvm."""
        module = importlib.import_module(self.module_name)
        return getattr(module, self.config_class), getattr(module, self.model_class)


def _fused_qkv(target: str, kind: str) -> FusedWeight:
    return FusedWeight(
        target=f"self_attn.{target}.{kind}",
        sources=tuple(f"self_attn.{p}_proj.{kind}" for p in ("q", "k", "v")),
    )


_GATE_UP = FusedWeight("mlp.gate_up_proj.weight", ("mlp.gate_proj.weight", "mlp.up_proj.weight"))
_UNUSED = ("rotary_emb.inv_freq",)


def qwen2_tiny_config() -> dict[str, Any]:
    """A Qwen2 config small enough to build in seconds (GQA 4:2, untied head)."""
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }


def llama_tiny_config() -> dict[str, Any]:
    """A Llama config small enough to build in seconds (GQA 4:2, untied head)."""
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }


def qwen3_tiny_config() -> dict[str, Any]:
    """A Qwen3 config small enough to build in seconds (GQA 4:2, head_dim 32 on a 64-wide model,
    tied head: like Qwen3-0.6B, head_dim is not hidden_size // heads)."""
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-6,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": True,
    }


def gemma3_tiny_config() -> dict[str, Any]:
    """A Gemma 3 text config small enough to build in seconds: two sliding-window layers and one
    global one with different RoPE bases, GQA 4:2, head_dim 32, query_pre_attn_scalar that is not
    head_dim, tied head. The window covers the context: plain attention, buildable for WebGPU
    (tests also build it with a 16-token window, which only CPU builds support)."""
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "num_hidden_layers": 3,
        "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
        "sliding_window": 512,
        "query_pre_attn_scalar": 48,
        "rms_norm_eps": 1e-6,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        "tie_word_embeddings": True,
    }


def mistral_tiny_config() -> dict[str, Any]:
    """A Mistral config small enough to build in seconds (GQA 4:1, untied head, a sliding window
    that covers the whole context, as in Mistral-7B-v0.1 at 4k)."""
    return {
        "model_type": "mistral",
        "architectures": ["MistralForCausalLM"],
        "hidden_act": "silu",
        "hidden_size": 64,
        "intermediate_size": 160,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 512,
        "max_position_embeddings": 512,
        "rope_theta": 1000000.0,
        "sliding_window": 4096,
        "tie_word_embeddings": False,
    }


BUILTIN_ARCHS: dict[str, ArchInfo] = {
    "qwen2": ArchInfo(
        name="qwen2",
        model_file="qwen2/qwen2_model.py",
        model_class="QWen2LMHeadModel",
        config_class="QWen2Config",
        hf_model_types=("qwen2",),
        fused_weights=(_fused_qkv("c_attn", "weight"), _fused_qkv("c_attn", "bias"), _GATE_UP),
        ignored_weight_suffixes=_UNUSED,
        tiny_config=qwen2_tiny_config,
    ),
    "llama": ArchInfo(
        name="llama",
        model_file="llama/llama_model.py",
        model_class="LlamaForCausalLM",
        config_class="LlamaConfig",
        hf_model_types=("llama",),
        fused_weights=(
            _fused_qkv("qkv_proj", "weight"),
            _fused_qkv("qkv_proj", "bias"),  # only when attention_bias is set
            _GATE_UP,
        ),
        ignored_weight_suffixes=_UNUSED,
        tiny_config=llama_tiny_config,
    ),
    "qwen3": ArchInfo(
        name="qwen3",
        model_file="qwen3/qwen3_model.py",
        model_class="Qwen3LMHeadModel",
        config_class="Qwen3Config",
        hf_model_types=("qwen3",),
        fused_weights=(_fused_qkv("qkv_proj", "weight"), _GATE_UP),
        ignored_weight_suffixes=_UNUSED,
        tiny_config=qwen3_tiny_config,
    ),
    "gemma3": ArchInfo(
        name="gemma3",
        model_file="gemma3/gemma3_model.py",
        model_class="Gemma3ForCausalLM",
        config_class="Gemma3Config",
        # "gemma3" (multimodal) is recognised only to be refused with a clear message.
        hf_model_types=("gemma3_text", "gemma3"),
        fused_weights=(_fused_qkv("qkv_proj", "weight"), _GATE_UP),
        ignored_weight_suffixes=_UNUSED,
        tiny_config=gemma3_tiny_config,
    ),
    "mistral": ArchInfo(
        name="mistral",
        model_file="mistral/mistral_model.py",
        model_class="MistralForCausalLM",
        config_class="MistralConfig",
        hf_model_types=("mistral",),
        fused_weights=(
            _fused_qkv("qkv_proj", "weight"),
            _fused_qkv("qkv_proj", "bias"),  # only when attention_bias is set
            _GATE_UP,
        ),
        ignored_weight_suffixes=_UNUSED,
        tiny_config=mistral_tiny_config,
    ),
}


class UnknownArchError(MlcpatchError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def get_arch(arch: str) -> ArchInfo:
    try:
        return BUILTIN_ARCHS[arch]
    except KeyError:
        known = ", ".join(sorted(BUILTIN_ARCHS))
        raise UnknownArchError(f"unknown architecture {arch!r} (known: {known})") from None


def builtin_model_file(arch: str) -> pathlib.Path:
    """Absolute path of the pristine (unpatched) model definition of ``arch``."""
    return MODELS_DIR / get_arch(arch).model_file


def arch_for_model_type(model_type: str) -> ArchInfo | None:
    """The built-in arch whose HF ``model_type`` list contains ``model_type``."""
    for info in BUILTIN_ARCHS.values():
        if model_type in info.hf_model_types:
            return info
    return None


def tiny_config(arch: str) -> dict[str, Any]:
    return get_arch(arch).tiny_config()
