"""Qwen2 / Qwen2.5 written in MLC-LLM's style on ``tvm.relax.frontend.nn``.

Differences from Llama: bias on the fused q/k/v projection, and a large RoPE theta. The file is
imported standalone from a build folder after patching, so every import is absolute.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from mlcpatch.models.config_base import ConfigBase
from mlcpatch.models.kv_cache import PagedKVCache, RopeMode
from mlcpatch.models.ops import index_last_token
from mlcpatch.models.rope import rope_scaling_from, rope_theta_from

ACT2FN = {
    "silu": nn.silu,
    "swish": nn.silu,
}


@dataclasses.dataclass
class QWen2Config(ConfigBase):
    """Configuration of the Qwen2 model, read from HF ``config.json``."""

    hidden_act: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    num_key_value_heads: int
    rms_norm_eps: float
    vocab_size: int
    rope_theta: float = 0.0
    tie_word_embeddings: bool = False
    context_window_size: int = 0
    prefill_chunk_size: int = 0
    head_dim: int = 0
    dtype: str = "float32"
    max_batch_size: int = 1
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        theta_source = {**self.kwargs, "rope_theta": self.rope_theta or None}
        self.rope_theta = rope_theta_from(theta_source, default=1000000.0)
        if rope_scaling_from(self.kwargs) is not None:
            raise ValueError("RoPE scaling is not supported for qwen2 models")
        if self.kwargs.get("use_sliding_window"):
            raise ValueError("sliding-window attention (use_sliding_window) is not supported")
        if self.hidden_act not in ACT2FN:
            raise ValueError(f"unsupported hidden_act {self.hidden_act!r}")
        if self.context_window_size == 0:
            if "max_position_embeddings" not in self.kwargs:
                raise ValueError(
                    "config.json gives neither context_window_size nor max_position_embeddings"
                )
            self.context_window_size = int(self.kwargs["max_position_embeddings"])
        if self.head_dim == 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.prefill_chunk_size <= 0 or self.prefill_chunk_size > self.context_window_size:
            self.prefill_chunk_size = min(self.context_window_size, 8192)


class QWen2Attention(nn.Module):
    def __init__(self, config: QWen2Config) -> None:
        self.head_dim = config.head_dim
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        # One matmul for q, k and v; the converter concatenates HF's three projections.
        self.c_attn = nn.Linear(
            in_features=config.hidden_size,
            out_features=(self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim,
            bias=True,
        )
        self.o_proj = nn.Linear(
            self.num_attention_heads * self.head_dim, config.hidden_size, bias=False
        )

    def forward(self, hidden_states: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        d, h_q, h_kv = self.head_dim, self.num_attention_heads, self.num_key_value_heads
        b, s, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states)
        qkv = op.reshape(qkv, (b, s, h_q + h_kv + h_kv, d))
        # RoPE is applied inside the cache (RopeMode.NORMAL) before k is stored.
        output = paged_kv_cache.attention_with_fused_qkv(
            layer_id, qkv, self.num_attention_heads, sm_scale=self.head_dim**-0.5
        )
        return self.o_proj(op.reshape(output, (b, s, h_q * d)))


class Qwen2Embedding(nn.Embedding):
    """Token embedding that doubles as the LM head when embeddings are tied."""

    def lm_head_forward(self, x: Tensor) -> Tensor:
        weight = op.permute_dims(self.weight)
        return op.matmul(x, weight, out_dtype="float32")


class QWen2MLP(nn.Module):
    def __init__(self, config: QWen2Config) -> None:
        self.intermediate_size = config.intermediate_size
        # gate and up fused into one matmul; split again in forward.
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(self.act_fn(gate) * up)


class QWen2DecoderLayer(nn.Module):
    def __init__(self, config: QWen2Config) -> None:
        self.self_attn = QWen2Attention(config)
        self.mlp = QWen2MLP(config)
        self.input_layernorm = nn.RMSNorm(config.hidden_size, -1, config.rms_norm_eps, bias=False)
        self.post_attention_layernorm = nn.RMSNorm(
            config.hidden_size, -1, config.rms_norm_eps, bias=False
        )

    def forward(self, hidden_states: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        out = self.self_attn(self.input_layernorm(hidden_states), paged_kv_cache, layer_id)
        hidden_states = out + hidden_states
        out = self.mlp(self.post_attention_layernorm(hidden_states))
        return out + hidden_states


class QWen2Model(nn.Module):
    def __init__(self, config: QWen2Config) -> None:
        self.embed_tokens = Qwen2Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [QWen2DecoderLayer(config) for _ in range(config.num_hidden_layers)]
        )
        self.norm = nn.RMSNorm(config.hidden_size, -1, config.rms_norm_eps, bias=False)

    def forward(self, inputs: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        hidden_states = inputs
        for layer_id, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, paged_kv_cache, layer_id)
        # Ends with the final norm: this output is the "last hidden state" HF reports.
        hidden_states = self.norm(hidden_states)
        return hidden_states


class QWen2LMHeadModel(nn.Module):
    def __init__(self, config: QWen2Config) -> None:
        self.model = QWen2Model(config)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.dtype = config.dtype
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.vocab_size = config.vocab_size

    def to(self, dtype: str | None = None) -> None:
        super().to(dtype=dtype)
        if dtype is not None:
            self.dtype = dtype

    def get_logits(self, hidden_states: Tensor) -> Tensor:
        if self.tie_word_embeddings:
            logits = self.model.embed_tokens.lm_head_forward(hidden_states)
        else:
            logits = self.lm_head(hidden_states)
        if logits.dtype != "float32":
            logits = logits.astype("float32")
        return logits

    def batch_forward(
        self,
        input_embeds: Tensor,
        paged_kv_cache: PagedKVCache,
        logit_positions: Tensor | None = None,
    ) -> Tensor:
        hidden_states = self.model(input_embeds, paged_kv_cache)
        if logit_positions is not None:
            hidden_states = op.take(hidden_states, logit_positions, axis=1)
        return self.get_logits(hidden_states)

    def embed(self, input_ids: Tensor) -> Tensor:
        return self.model.embed_tokens(input_ids)

    def prefill(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, Any]:
        hidden_states = self.model(input_embed, paged_kv_cache)
        hidden_states = index_last_token(hidden_states)
        logits = self.get_logits(hidden_states)
        return logits, paged_kv_cache

    def decode(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> tuple[Tensor, Any]:
        hidden_states = self.model(input_embed, paged_kv_cache)
        logits = self.get_logits(hidden_states)
        return logits, paged_kv_cache

    def batch_prefill(
        self, input_embeds: Tensor, logit_positions: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, Any]:
        logits = self.batch_forward(input_embeds, paged_kv_cache, logit_positions)
        return logits, paged_kv_cache

    def batch_decode(
        self, input_embeds: Tensor, paged_kv_cache: PagedKVCache
    ) -> tuple[Tensor, Any]:
        logits = self.batch_forward(input_embeds, paged_kv_cache)
        return logits, paged_kv_cache

    def create_paged_kv_cache(
        self,
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
    ) -> PagedKVCache:
        return PagedKVCache.create_generic(
            attn_kind="mha",
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            qk_head_dim=self.head_dim,
            v_head_dim=self.head_dim,
            rope_mode=RopeMode.NORMAL,
            rope_scale=1,
            rope_theta=self.rope_theta,
            dtype=self.dtype,
        )

    def get_default_spec(self) -> nn.spec.ModuleSpec:
        mod_spec = {
            "embed": {
                "input_ids": nn.spec.Tensor(["seq_len"], "int32"),
                "$": {
                    "param_mode": "packed",
                    "effect_mode": "none",
                },
            },
            "prefill": {
                "input_embed": nn.spec.Tensor([1, "seq_len", self.hidden_size], self.dtype),
                "paged_kv_cache": nn.spec.Object(object_type=PagedKVCache),
                "$": {
                    "param_mode": "packed",
                    "effect_mode": "none",
                },
            },
            "decode": {
                "input_embed": nn.spec.Tensor([1, 1, self.hidden_size], self.dtype),
                "paged_kv_cache": nn.spec.Object(object_type=PagedKVCache),
                "$": {
                    "param_mode": "packed",
                    "effect_mode": "none",
                },
            },
            "batch_prefill": {
                "input_embeds": nn.spec.Tensor([1, "seq_len", self.hidden_size], self.dtype),
                "logit_positions": nn.spec.Tensor(["batch_size"], "int32"),
                "paged_kv_cache": nn.spec.Object(object_type=PagedKVCache),
                "$": {
                    "param_mode": "packed",
                    "effect_mode": "none",
                },
            },
            "batch_decode": {
                "input_embeds": nn.spec.Tensor(["batch_size", 1, self.hidden_size], self.dtype),
                "paged_kv_cache": nn.spec.Object(object_type=PagedKVCache),
                "$": {
                    "param_mode": "packed",
                    "effect_mode": "none",
                },
            },
            "create_paged_kv_cache": {
                "max_batch_size": int,
                "max_total_seq_len": int,
                "prefill_chunk_size": int,
                "page_size": int,
                "support_sliding_window": int,
                "$": {
                    "param_mode": "none",
                    "effect_mode": "none",
                },
            },
        }
        return nn.spec.ModuleSpec.from_raw(mod_spec, self)
