"""The paged KV cache our model definitions create, resolved against the compile target.

MLC-LLM's model files call ``PagedKVCache.create_generic`` and a later compiler pass swaps in
the target's implementation. Apache TVM ships no such pass, so ``create_generic`` here builds the
TIR implementation directly for ``tvm.target.Target.current()``: the build exports the model inside
``with target:``. Model files keep the MLC call shape, which is what the patcher expects to see.
"""

from __future__ import annotations

from typing import Any, Literal

import tvm
from tvm import relax as rx
from tvm import tirx
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache as TVMPagedKVCache
from tvm.relax.frontend.nn.llm.kv_cache import RopeMode, TIRPagedKVCache
from tvm.target import Target

from mlcpatch.build import cpu_attention
from mlcpatch.models.config_base import ModelConfigError

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
        base of 10000). Its WebGPU window kernels are not: with our merge kernel (below) a
        prefill that continues a sequence is exact, but once the sequence passes about twice the
        window every call is off (tiny Gemma 3, window 16, chunks of 8: hidden states within
        2.1e-6 of the CPU build up to position 29, 0.7-1.2 from position 41 on). Refused here.
        """
        target = Target.current(allow_none=True)
        if target is None:
            raise RuntimeError(
                "PagedKVCache.create_generic needs a compile target: export the model inside "
                "`with tvm.target.Target(...):`"
            )
        if "mha_sliding" in attn_kind and target.kind.name != "llvm":
            raise ModelConfigError(
                f"sliding-window attention beyond the window ({layer_sliding_window_size} "
                f"tokens) is exact only in CPU (llvm) builds: TVM's {target.kind.name} window "
                "kernels differ from transformers; for this target use a context window no "
                f"longer than the window (--context-window-size {layer_sliding_window_size})"
            )
        try:
            cache = TIRPagedKVCache(
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
                # The kernels test `"rope_type" in rope_scaling`: "no scaling" is an empty dict.
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
        except ValueError as exc:
            # TVM's GPU prefill kernels tile head_dim into a fixed thread layout; sizes such as 12
            # and 20 do not factor and fail deep inside the scheduler. Say which size and why.
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelConfigError(
                f"head_dim {qk_head_dim} ({num_attention_heads} query / {num_key_value_heads} "
                f"key-value heads) is not supported by TVM {tvm.__version__}'s "
                f"{target.kind.name} attention kernels; real models use head_dim 64, 80, 96, 128 "
                f"or 256, which work, and a CPU (llvm) build takes any head_dim. TVM: {reason}"
            ) from exc
        if target.kind.name != "llvm":
            replace_merge_kernels(rx.BlockBuilder.current())
        else:
            cpu_attention.install(
                rx.BlockBuilder.current(),
                num_kv_heads=num_key_value_heads,
                num_qo_heads=num_attention_heads,
                head_dim=qk_head_dim,
                v_head_dim=v_head_dim,
                dtype=dtype,
                rope_theta=rope_theta,
                rope_scale=rope_scale,
                rope_scaling=dict(rope_scaling or {}),
            )
        return cache


# TVM's GPU kernel that merges two partial attention results (tir_attention_merge_state, from
# tvm.relax.frontend.nn.llm._decode_kernels._merge_state_inplace) races: the head_dim / 4
# invocations that share a (position, head) row all read S[n, h] and all write the merged value
# back, with no barrier, so one that writes first makes the others merge with the new S. Only a
# prefill that continues a sequence merges (attention over the new positions, then over the
# cached pages), and it came out off by 2-5 on the hidden states for head_dim 32 and 64 on
# SwiftShader, while head_dim 16 (4 invocations a row, one SIMD group there) was exact. On a GPU
# the outcome depends on the row fitting one SIMD group (warp / wave): head_dim 256 needs 64
# invocations, more than an NVIDIA warp. Our kernel below gives each row to one invocation.
_MERGE_SYMBOLS = ("tir_attention_merge_state", "tir_attention_merge_state_mla")
_MERGE_THREADS = 64  # invocations per workgroup, one per (position, head) row


def merge_state_inplace(dtype: str, global_symbol: str) -> tirx.PrimFunc:
    """``(V, S) <- merge((V, S), (V_other, S_other))`` without sharing a row between
    invocations: each invocation owns one (position, head) row, reads its S once and writes it
    once, so the result cannot depend on the order invocations run in.

    V, V_other: [n, heads, head_dim] attention outputs; S, S_other: [n, heads] their
    log2-sum-exp2 scores (as TVM's attention kernels write them).
    """
    from tvm.script import tirx as T

    threads = _MERGE_THREADS

    # fmt: off
    @T.prim_func(s_tir=True)
    def merge(v: T.handle, s: T.handle, v_other: T.handle, s_other: T.handle):
        T.func_attr({"tirx.is_scheduled": True, "global_symbol": global_symbol})
        N = T.int32()
        H = T.int32()
        D = T.int32()
        V = T.match_buffer(v, (N, H, D), dtype)
        S = T.match_buffer(s, (N, H), "float32")
        V_other = T.match_buffer(v_other, (N, H, D), dtype)
        S_other = T.match_buffer(s_other, (N, H), "float32")
        for bx in T.thread_binding(T.ceildiv(N * H, threads), thread="blockIdx.x"):
            for tx in T.thread_binding(threads, thread="threadIdx.x"):
                with T.sblock("merge"):
                    vbx, vtx = T.axis.remap("SS", [bx, tx])
                    T.reads()
                    T.writes()
                    # [max, exp2(S - max), exp2(S_other - max), V's weight, V_other's weight]:
                    # a buffer, not lets, which TVM would inline and evaluate again at every use.
                    acc = T.sblock_alloc_buffer((5,), "float32", scope="local")
                    row: T.let[T.int32] = vbx * threads + vtx
                    if row < N * H:
                        n: T.let[T.int32] = row // H
                        h: T.let[T.int32] = row % H
                        acc[0] = T.max(S[n, h], S_other[n, h])
                        acc[1] = T.exp2(S[n, h] - acc[0])
                        acc[2] = T.exp2(S_other[n, h] - acc[0])
                        acc[3] = acc[1] / (acc[1] + acc[2])
                        acc[4] = acc[2] / (acc[1] + acc[2])
                        for d in T.serial(D):
                            V[n, h, d] = T.Cast(
                                dtype,
                                T.Cast("float32", V[n, h, d]) * acc[3]
                                + T.Cast("float32", V_other[n, h, d]) * acc[4],
                            )
                        S[n, h] = T.log2(acc[1] + acc[2]) + acc[0]
    # fmt: on

    return merge


def replace_merge_kernels(bb: rx.BlockBuilder) -> None:
    """Swap TVM's racy merge kernels in the module ``bb`` is building for merge_state_inplace."""
    for gvar, func in bb.get().functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        symbol = str(func.attrs.get("global_symbol", "")) if func.attrs else ""
        if symbol in _MERGE_SYMBOLS:
            dtype = str(func.params[0].ty.dtype)  # V: [n, heads, head_dim]
            bb.update_func(gvar, merge_state_inplace(dtype, symbol))
