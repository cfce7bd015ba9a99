"""Gemma 3 text models (``gemma3_text``: 270m, 1b) in MLC-LLM's style on ``tvm.relax.frontend.nn``.

What differs from Llama, each matching transformers' ``Gemma3ForCausalLM``:
- ``embed`` multiplies embeddings by sqrt(hidden_size), rounded to the model dtype;
- RMSNorm scales by (1 + weight) and works in float32; each layer has four of them (input,
  post-attention, pre-feedforward, post-feedforward) plus per-head q/k norms before RoPE;
- gelu (tanh approximation) MLP, attention scale query_pre_attn_scalar**-0.5, tied LM head,
  optional final logit soft-capping;
- sliding-window layers use their own RoPE base (rope_local_base_freq) and the full-attention
  layers rope_theta with optional linear scaling. The KV cache applies one base to all layers,
  so it runs in RopeMode.NONE and q/k are rotated here at the cache's query positions.

Sliding windows (exact against transformers in both cases, see ``Gemma3Config._resolve_window``):
- context_window_size <= sliding_window: the window excludes nothing; plain attention, any target;
- longer contexts: sliding layers are "mha_sliding" layers of the KV cache, which attend to the
  last ``sliding_window`` positions. CPU (llvm) builds only (TVM's WebGPU window kernels are
  wrong), and every prefill chunk must be shorter than the window: a derived prefill_chunk_size
  is lowered to window - 1, a larger explicit one refused, and the runtime checks the limits the
  build records (``runtime_limits``).
Attention logit soft-capping, bidirectional attention, RoPE scaling other than linear and
multimodal (``gemma3``) checkpoints are refused when the config is read. The file is imported
standalone from a build folder after patching, so every import is absolute.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tvm import tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from mlcpatch.models.config_base import ConfigBase, chunk_within_window
from mlcpatch.models.kv_cache import PagedKVCache, RopeMode
from mlcpatch.models.ops import index_last_token, rotary_embedding
from mlcpatch.models.rope import layer_type_rope_from

SLIDING = "sliding_attention"
FULL = "full_attention"
# HF activation name -> gelu approximation ("tanh" or None for the exact erf form).
GELU_APPROXIMATION = {"gelu_pytorch_tanh": "tanh", "gelu_new": "tanh", "gelu": None}


@dataclasses.dataclass
class Gemma3Config(ConfigBase):
    """Configuration of the Gemma 3 text model, read from HF ``config.json``."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_hidden_layers: int
    vocab_size: int
    head_dim: int = 256
    num_key_value_heads: int = 0
    rms_norm_eps: float = 1e-6
    hidden_activation: str = "gelu_pytorch_tanh"
    query_pre_attn_scalar: float = 256.0
    sliding_window: int | None = 4096
    layer_types: list[str] | None = None
    final_logit_softcapping: float | None = None
    attn_logit_softcapping: float | None = None
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    # Resolved from rope_parameters (transformers >= 5) or these legacy keys.
    rope_theta: float = 0.0  # full-attention layers
    rope_local_base_freq: float = 0.0  # sliding-window layers
    rope_scaling: dict[str, Any] | None = None  # full-attention layers (linear only)
    rope_local_scaling: dict[str, Any] | None = None
    context_window_size: int = 0
    prefill_chunk_size: int = 0
    # Whether sliding layers use the KV cache's window kernels (contexts beyond the window).
    window_kernels: bool = False
    # Largest values the runtime may use for these settings (see _resolve_window).
    runtime_limits: dict[str, int] = dataclasses.field(default_factory=dict)
    dtype: str = "float32"
    max_batch_size: int = 1
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, source: dict[str, Any]) -> Gemma3Config:
        if "text_config" in source or source.get("model_type") == "gemma3":
            raise ValueError(
                "multimodal Gemma 3 checkpoints (model_type 'gemma3') are not supported; use a "
                "text-only one (model_type 'gemma3_text', e.g. google/gemma-3-1b-it)"
            )
        return super().from_dict(source)

    def __post_init__(self) -> None:
        self._resolve_rope()
        if self.hidden_activation not in GELU_APPROXIMATION:
            raise ValueError(f"unsupported hidden_activation {self.hidden_activation!r}")
        if self.attn_logit_softcapping is not None:
            raise ValueError(
                "attn_logit_softcapping is not supported: the KV cache's attention kernels "
                "cannot soft-cap attention scores"
            )
        if self.kwargs.get("use_bidirectional_attention"):
            raise ValueError("use_bidirectional_attention (bidirectional Gemma 3) is not supported")
        if self.attention_bias:
            raise ValueError("attention_bias=True is not supported for gemma3")
        self._resolve_layer_types()
        explicit_chunk = self.prefill_chunk_size > 0
        if self.context_window_size == 0:
            if "max_position_embeddings" not in self.kwargs:
                raise ValueError(
                    "config.json gives neither context_window_size nor max_position_embeddings"
                )
            self.context_window_size = int(self.kwargs["max_position_embeddings"])
        if self.num_key_value_heads == 0:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.prefill_chunk_size <= 0 or self.prefill_chunk_size > self.context_window_size:
            self.prefill_chunk_size = min(self.context_window_size, 8192)
        self._resolve_window(explicit_chunk)

    def _resolve_window(self, explicit_chunk: bool) -> None:
        """How sliding layers run, and the runtime limits that keep them exact.

        Within the window (context <= window) the window excludes nothing: plain attention, on
        every target, and the runtime may not raise the context past the window. Beyond it the
        sliding layers use the KV cache's window kernels: CPU builds only, prefill chunks
        shorter than the window (kv_cache.py, config_base.chunk_within_window).
        """
        assert self.layer_types is not None
        if SLIDING not in self.layer_types or not self.sliding_window:
            self.sliding_window = None  # recorded as the window that applies
        elif self.context_window_size <= self.sliding_window:
            self.runtime_limits = {"context_window_size": self.sliding_window}
        else:
            self.window_kernels = True
            self.prefill_chunk_size = chunk_within_window(
                self.prefill_chunk_size, explicit_chunk, self.sliding_window, "gemma3"
            )
            self.runtime_limits = {"prefill_chunk_size": self.sliding_window - 1}

    def _resolve_rope(self) -> None:
        source = {
            **self.kwargs,
            "rope_theta": self.rope_theta or None,
            "rope_local_base_freq": self.rope_local_base_freq or None,
            "rope_scaling": self.rope_scaling,
        }
        self.rope_theta, self.rope_scaling = layer_type_rope_from(
            source, FULL, "rope_theta", 1000000.0
        )
        self.rope_local_base_freq, self.rope_local_scaling = layer_type_rope_from(
            source, SLIDING, "rope_local_base_freq", 10000.0
        )
        for scaling in (self.rope_scaling, self.rope_local_scaling):
            if scaling is not None and scaling["rope_type"] != "linear":
                raise ValueError(
                    f"unsupported RoPE scaling type {scaling['rope_type']!r} for gemma3 "
                    "(supported: linear)"
                )

    def _resolve_layer_types(self) -> None:
        if self.layer_types is None:
            # Older configs give the period instead: every pattern-th layer is global.
            pattern = int(self.kwargs.get("sliding_window_pattern", 6))
            self.layer_types = [
                SLIDING if (i + 1) % pattern else FULL for i in range(self.num_hidden_layers)
            ]
        self.layer_types = list(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(
                f"layer_types has {len(self.layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        unknown = sorted(set(self.layer_types) - {SLIDING, FULL})
        if unknown:
            raise ValueError(f"unsupported layer type(s) {', '.join(unknown)}")

    def attn_kinds(self) -> list[str]:
        """The KV cache's attention kind per layer ("mha_sliding": windowed)."""
        assert self.layer_types is not None
        windowed = self.window_kernels
        return ["mha_sliding" if windowed and t == SLIDING else "mha" for t in self.layer_types]

    def layer_rope(self, layer_id: int) -> tuple[float, float]:
        """(RoPE base, linear position factor) of one layer: by its type, as in HF."""
        assert self.layer_types is not None
        if self.layer_types[layer_id] == SLIDING:
            theta, scaling = self.rope_local_base_freq, self.rope_local_scaling
        else:
            theta, scaling = self.rope_theta, self.rope_scaling
        return theta, float(scaling["factor"]) if scaling else 1.0


class Gemma3RMSNorm(nn.Module):
    """RMSNorm scaled by (1 + weight), computed in float32 and cast back, as transformers does."""

    def __init__(self, dim: int, eps: float) -> None:
        self.weight = nn.Parameter((dim,))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight.astype("float32") + 1.0
        out = op.rms_norm(x.astype("float32"), scale, axes=-1, epsilon=self.eps)
        return out.astype(x.dtype)


class Gemma3Embedding(nn.Embedding):
    """Token embedding that doubles as the (unscaled) tied LM head.

    The sqrt(hidden_size) scale is applied in ``Gemma3ForCausalLM.embed``, not here: quantizers
    swap nn.Embedding subclasses for their own table and would drop a scale kept in forward.
    """

    def lm_head_forward(self, x: Tensor) -> Tensor:
        weight = op.permute_dims(self.weight)
        return op.matmul(x, weight, out_dtype="float32")


class Gemma3Attention(nn.Module):
    def __init__(self, config: Gemma3Config, layer_id: int) -> None:
        self.head_dim = config.head_dim
        self.num_q_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = config.query_pre_attn_scalar**-0.5
        self.rope_theta, self.rope_factor = config.layer_rope(layer_id)
        # One matmul for q, k and v; the converter concatenates HF's three projections.
        self.qkv_proj = nn.Linear(
            in_features=config.hidden_size,
            out_features=(self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim,
            bias=False,
        )
        self.o_proj = nn.Linear(self.num_q_heads * self.head_dim, config.hidden_size, bias=False)
        self.q_norm = Gemma3RMSNorm(config.head_dim, config.rms_norm_eps)
        self.k_norm = Gemma3RMSNorm(config.head_dim, config.rms_norm_eps)

    def forward(self, hidden_states: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        d, h_q, h_kv = self.head_dim, self.num_q_heads, self.num_kv_heads
        b, s, _ = hidden_states.shape
        qkv = op.reshape(self.qkv_proj(hidden_states), (b, s, h_q + h_kv + h_kv, d))
        q, k, v = op.split(qkv, indices_or_sections=[h_q, h_q + h_kv], axis=2)
        # This layer's RoPE base is applied here (the cache runs in RopeMode.NONE).
        positions = paged_kv_cache.get_query_positions(b * s)
        q = rotary_embedding(self.q_norm(q), positions, self.rope_theta, self.rope_factor)
        k = rotary_embedding(self.k_norm(k), positions, self.rope_theta, self.rope_factor)
        output = paged_kv_cache.attention_with_fused_qkv(
            layer_id, op.concat([q, k, v], dim=2), self.num_q_heads, sm_scale=self.scaling
        )
        return self.o_proj(op.reshape(output, (b, s, h_q * d)))


class Gemma3MLP(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        self.intermediate_size = config.intermediate_size
        # gate and up fused into one matmul; split again in forward.
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * self.intermediate_size, bias=False)
        self.down_proj = nn.Linear(self.intermediate_size, config.hidden_size, bias=False)
        self.approximate = GELU_APPROXIMATION[config.hidden_activation]

    def forward(self, x: Tensor) -> Tensor:
        gate, up = op.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(op.gelu(gate, approximate=self.approximate) * up)


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Gemma3Config, layer_id: int) -> None:
        eps = config.rms_norm_eps
        self.self_attn = Gemma3Attention(config, layer_id)
        self.mlp = Gemma3MLP(config)
        self.input_layernorm = Gemma3RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = Gemma3RMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = Gemma3RMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = Gemma3RMSNorm(config.hidden_size, eps)

    def forward(self, hidden_states: Tensor, paged_kv_cache: PagedKVCache, layer_id: int) -> Tensor:
        out = self.self_attn(self.input_layernorm(hidden_states), paged_kv_cache, layer_id)
        hidden_states = hidden_states + self.post_attention_layernorm(out)
        out = self.mlp(self.pre_feedforward_layernorm(hidden_states))
        return hidden_states + self.post_feedforward_layernorm(out)


class Gemma3TextModel(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        self.embed_tokens = Gemma3Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            [Gemma3DecoderLayer(config, i) for i in range(config.num_hidden_layers)]
        )
        self.norm = Gemma3RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_embed: Tensor, paged_kv_cache: PagedKVCache) -> Tensor:
        hidden_states = input_embed
        for layer_id, layer in enumerate(self.layers):
            hidden_states = layer(hidden_states, paged_kv_cache, layer_id)
        # Ends with the final norm: this output is the "last hidden state" HF reports.
        hidden_states = self.norm(hidden_states)
        return hidden_states


class Gemma3ForCausalLM(nn.Module):
    def __init__(self, config: Gemma3Config) -> None:
        self.model = Gemma3TextModel(config)
        self.tie_word_embeddings = config.tie_word_embeddings
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.final_logit_softcapping = config.final_logit_softcapping
        self.embed_scale = config.hidden_size**0.5
        self.dtype = config.dtype
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.vocab_size = config.vocab_size
        self.attn_kinds = config.attn_kinds()
        self.sliding_window = config.sliding_window or 0

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
        if self.final_logit_softcapping is not None:
            cap = float(self.final_logit_softcapping)
            logits = op.tanh(logits / cap) * cap
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
        # Scaled like HF's embedding output, so prefill's inputs are what HF's inputs_embeds are.
        # A Python float becomes a constant of the tensor's dtype: the scale is rounded to the
        # model dtype first, like HF's embed_scale.to(weight.dtype).
        return self.model.embed_tokens(input_ids) * self.embed_scale

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
            attn_kind=self.attn_kinds,
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
            # q/k arrive rotated: each layer applied its own base in Gemma3Attention.
            rope_mode=RopeMode.NONE,
            rope_scale=1,
            rope_theta=self.rope_theta,
            dtype=self.dtype,
            # Sliding layers attend to the last sliding_window positions (HF: q - k < window).
            layer_sliding_window_size=self.sliding_window or 1024,
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
