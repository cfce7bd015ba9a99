"""The paged KV cache our model definitions create, resolved against the compile target.

MLC-LLM's model files call ``PagedKVCache.create_generic`` and a later compiler pass swaps in
the target's implementation. Apache TVM ships no such pass, so ``create_generic`` here builds the
TIR implementation directly for ``tvm.target.Target.current()``: the build exports the model inside
``with target:``. Model files keep the MLC call shape, which is what the patcher expects to see.
"""

from __future__ import annotations

from typing import Any, Literal

from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache as TVMPagedKVCache
from tvm.relax.frontend.nn.llm.kv_cache import RopeMode, TIRPagedKVCache
from tvm.target import Target

__all__ = ["PagedKVCache", "RopeMode", "SUPPORTED_ROPE_SCALING"]

# RoPE scaling types the TIR kernels of TVM 0.27 implement (position_embedding.py).
SUPPORTED_ROPE_SCALING = ("llama3",)


class PagedKVCache(TVMPagedKVCache):
    """TVM's paged KV cache with MLC-LLM's ``create_generic`` entry point."""

    @staticmethod
    def create_generic(
        attn_kind: Literal["mha"] | list[Literal["mha", "mha_sliding"]],
        max_batch_size: tirx.Var,
        max_total_seq_len: tirx.Var,
        prefill_chunk_size: tirx.Var,
        page_size: tirx.Var,
        support_sliding_window: tirx.Var,
        num_hidden_layers: int,
        num_attention_heads: int,
        num_key_value_heads: int,
        qk_head_dim: int,
        v_head_dim: int,
        rope_mode: RopeMode,
        rope_scale: int,
        rope_theta: float,
        dtype: str,
        rope_scaling: dict[str, Any] | None = None,
        name: str = "paged_kv_cache",
        layer_sliding_window_size: int = 1024,
    ) -> TVMPagedKVCache:
        """The cache for ``Target.current()``. ``attn_kind`` may list one kind per layer:
        "mha_sliding" layers attend only to the last ``layer_sliding_window_size`` positions.

        Measured against transformers (tiny Gemma 3), TVM 0.27's window kernels are exact on CPU
        when every prefill chunk is shorter than the window and the model applies RoPE itself
        (``RopeMode.NONE``; with the cache's RoPE, windowed layers get inline RoPE with a fixed
        base of 10000). Its WebGPU window kernels are not: a prefill that continues a sequence,
        or a sequence past about twice the window, comes out wrong. So they are refused here.
        """
        target = Target.current(allow_none=True)
        if target is None:
            raise RuntimeError(
                "PagedKVCache.create_generic needs a compile target: export the model inside "
                "`with tvm.target.Target(...):`"
            )
        if "mha_sliding" in attn_kind and target.kind.name != "llvm":
            raise ValueError(
                f"sliding-window attention beyond the window ({layer_sliding_window_size} "
                f"tokens) is exact only in CPU (llvm) builds: TVM's {target.kind.name} window "
                "kernels differ from transformers; for this target use a context window no "
                f"longer than the window (--context-window-size {layer_sliding_window_size})"
            )
        return TIRPagedKVCache(
            attn_kind=attn_kind,
            max_batch_size=max_batch_size,
            max_total_seq_len=max_total_seq_len,
            prefill_chunk_size=prefill_chunk_size,
            page_size=page_size,
            support_sliding_window=support_sliding_window,
            layer_partition=rx.ShapeExpr([0, num_hidden_layers]),
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads,
            qk_head_dim=qk_head_dim,
            v_head_dim=v_head_dim,
            mla_original_qk_head_dim=0,
            mla_original_v_head_dim=0,
            rope_mode=rope_mode,
            rope_scale=rope_scale,
            rope_theta=rope_theta,
            # The kernels test `"rope_type" in rope_scaling`, so "no scaling" is an empty dict.
            rope_scaling=dict(rope_scaling or {}),
            # Relax has no Optional: prim_value(0) stands for "no longrope factors".
            rope_ext_factors=rx.prim_value(0),
            rotary_dim=qk_head_dim,
            enable_disaggregation=False,
            dtype=dtype,
            target=target,
            name=name,
            layer_sliding_window_size=layer_sliding_window_size,
        )
