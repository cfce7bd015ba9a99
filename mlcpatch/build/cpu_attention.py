"""Hand-written CPU kernels for the paged KV cache, in place of TVM's generic ones
(``tvm.relax.frontend.nn.llm``), which run as scalar loops on the llvm target.

Measured on one znver3 core, SmolLM2 shapes (9 query heads, 3 KV heads, head dim 64), per
layer, TVM's kernel / ours: decode attention at 64 cached positions 66 / 5.5 us, at 512
521 / 34 us (a whole 4-bit decode step of 30 layers is about 13 ms); ragged prefill of 200
tokens 14.6 / 1.7 ms; RoPE split of one token 15 / 1.7 us (TVM's evaluates a cosine and a sine
for every element of every head).

- ``paged_decode_attention``, ``paged_prefill_attention``, ``ragged_prefill_attention``: one
  task per (query row, KV head) keeps the group's query heads together, so each key and value
  row is read once for all of them; 16 positions (a page) at a time: four rows of 8-lane dot
  products at once, an online softmax with a vectorised polynomial ``exp2``, value rows
  accumulated in 8-lane vectors. Same arguments, masks, outputs (``output``, ``lse`` in log2)
  and initial state as TVM's kernels of the same role.
- ``split_rotary``: one cosine/sine table per token (``head_dim`` entries, from TVM's own
  frequency functions, so every RoPE scaling it knows gives the same angles), applied to all
  query and key heads with vector arithmetic.

``install`` swaps them into the module being built, for float32 and float16 caches (float16 data
widened as it is loaded, float32 arithmetic) on CPU targets
(native and wasm32); sliding-window layers and other dtypes keep TVM's kernels.
"""

from __future__ import annotations

import math
from typing import Any

from mlcpatch.build.cpu_kernels import load_f32, rounded_for

CHUNK = 16  # key/value rows per online-softmax step: one KV-cache page
LANES = 8  # f32 lanes of one AVX2 register (two SSE2 / wasm SIMD ones)
LOG2E = math.log2(math.e)  # the kernels' softmax is in base 2, as TVM's
# Cache dtypes the kernels take: float16 data is widened on load, the arithmetic is float32 (as
# in TVM's CPU kernels, whose scratch is float32), the outputs rounded once.
DTYPES = ("float32", "float16")

# 2**f on [-1, 0] as a degree-7 polynomial (least squares on Chebyshev nodes; relative error
# about 1e-9, below float32 rounding): exp2 without a libm call per score, so it vectorizes.
_EXP2_DEGREE = 7


def _exp2_coefficients() -> tuple[float, ...]:
    import numpy as np

    nodes = -0.5 + 0.5 * np.cos(np.pi * (np.arange(64) + 0.5) / 64)
    fit = np.polynomial.Polynomial.fit(nodes, np.exp2(nodes), _EXP2_DEGREE)
    return tuple(float(c) for c in fit.convert().coef)


_EXP2 = _exp2_coefficients()


def _exp2(x: Any) -> Any:
    """``2**x`` for float32 ``x <= 0`` in vector-friendly operations: x = n + f with n the
    integer part (truncated, so f in (-1, 0]), 2**f by the polynomial, 2**n built in the exponent
    bits. Below 2**-125 (which no softmax term can tell from 0) it stays at 2**-125."""
    from tvm import tirx

    x = tirx.max(x, tirx.const(-125.0, "float32"))
    n = tirx.Cast("int32", x)
    f = x - tirx.Cast("float32", n)
    poly = tirx.const(_EXP2[-1], "float32")
    for coef in reversed(_EXP2[:-1]):
        poly = poly * f + tirx.const(coef, "float32")
    bits = tirx.shift_left(n + 127, 23)
    return poly * tirx.reinterpret("float32", bits)


# RoPE variants whose frequency function takes (position, d, rotary_dim, theta, dtype) and pairs
# d with d +- rotary_dim / 2 (gptj pairs neighbours; longrope takes a factors tensor).
_TABLE_ROPES = (None, "llama3", "llama4", "yarn")


def _rope_angle(
    rope_scaling: dict[str, Any], which: int, pos: Any, d: Any, dim: int, theta: Any
) -> Any:
    """Cosine (``which`` 0) or sine (1) of position ``pos`` (float32) for feature ``d``, from
    TVM's function for this RoPE scaling, its intermediate variables bound."""
    from tvm import tirx
    from tvm.relax.frontend.nn.llm.position_embedding import switch_rope_freq_func

    *angles, bound = switch_rope_freq_func(rope_scaling)(pos, d, dim, theta, "float32")
    expr = angles[which]
    for var, value in bound.items():
        expr = tirx.Let(var, value, expr)
    return expr


def _rotated(buf: Any, idx: tuple[Any, ...], pos: Any, dim: int, theta: Any, scaling: Any) -> Any:
    """RoPE of ``buf[idx]`` (last index the feature) at position ``pos``, computed in place of
    a table: for the rare caches that rotate keys inside attention."""
    from tvm import tirx

    d = idx[-1]
    cos, sin = (_rope_angle(scaling, which, pos, d, dim, theta) for which in (0, 1))
    half = dim // 2
    partner = tirx.if_then_else(
        d < half, -load_f32(buf, (*idx[:-1], d + half)), load_f32(buf, (*idx[:-1], d - half))
    )
    return cos * load_f32(buf, idx) + sin * partner


def _attention_macros(hq: int, hk: int, dim: int, rope_scaling: dict[str, Any]) -> Any:
    """The three steps every attention kernel here takes for one query row and one KV head
    (its ``hq // hk`` query heads together), as TVMScript macros over the task's scratch
    buffers ``st`` = (queries, output accumulator, running max, running sum, scores,
    4 x 8-lane dots, 2-slot reduction):

    - ``start``: load (and with inline RoPE rotate) the queries, scaled by ``sm_scale * log2 e``,
      and reset the online-softmax state to TVM's (max -5e4, sum 1: an empty row gives lse -5e4).
    - ``attend``: ``rows`` (<= 16) key/value rows at ``kf[k_base + r * k_stride + d]`` /
      ``vf[v_base + r * v_stride + d]``: scores by 8-lane dot products, the softmax state moved
      on by one rescale, values accumulated in vectors.
    - ``finish``: output and lse (base 2) of the row.
    - ``attend_pages``: ``attend`` over a sequence's cached pages, one page at a time.
    """
    from tvm.script import tirx as T

    group = hq // hk
    chunks = dim // LANES

    @T.macro
    def start(st: Any, query: Any, row: Any, kv_head: Any, rotary: Any, pos: Any,
              rope_scale: Any, rope_theta: Any, qscale: Any) -> None:  # fmt: skip
        qs, acc_o, run_max, run_sum = st[0], st[1], st[2], st[3]
        for g in range(group):
            if rotary == 1:
                for d in range(dim):
                    qs[g, d] = qscale * _rotated(
                        query,
                        (row, kv_head * group + g, d),
                        T.Cast("float32", pos) * rope_scale,
                        dim,
                        rope_theta,
                        rope_scaling,
                    )
            else:
                for d in T.vectorized(dim):
                    qs[g, d] = qscale * load_f32(query, (row, kv_head * group + g, d))
            for d in T.vectorized(dim):
                acc_o[g, d] = T.float32(0)
            run_max[g] = T.float32(-5e4)
            run_sum[g] = T.float32(1)

    @T.macro
    def attend(st: Any, kf: Any, vf: Any, k_base: Any, v_base: Any, k_stride: Any,
               v_stride: Any, rows: Any) -> None:  # fmt: skip
        qs, acc_o, run_max, run_sum, score, dot, red = st
        # Four rows at a time: four independent FMA chains (one chain waits on its own latency),
        # then a tree sum of each row's 8 lanes; leftover rows one at a time.
        for g, quad in T.grid(group, rows // 4):
            for i in T.unroll(4):
                for lane in T.vectorized(LANES):
                    dot[i, lane] = T.float32(0)
            for c in range(chunks):
                for i in T.unroll(4):
                    for lane in T.vectorized(LANES):
                        dot[i, lane] = dot[i, lane] + qs[g, c * LANES + lane] * load_f32(
                            kf, k_base + (quad * 4 + i) * k_stride + c * LANES + lane
                        )
            for i in T.unroll(4):
                for lane in T.vectorized(4):
                    dot[i, lane] = dot[i, lane] + dot[i, lane + 4]
                score[g, quad * 4 + i] = (dot[i, 0] + dot[i, 2]) + (dot[i, 1] + dot[i, 3])
        for g, r in T.grid(group, rows - rows // 4 * 4):
            for lane in T.vectorized(LANES):
                dot[0, lane] = T.float32(0)
            for c in range(chunks):
                for lane in T.vectorized(LANES):
                    dot[0, lane] = dot[0, lane] + qs[g, c * LANES + lane] * load_f32(
                        kf, k_base + (rows // 4 * 4 + r) * k_stride + c * LANES + lane
                    )
            for lane in T.vectorized(4):
                dot[0, lane] = dot[0, lane] + dot[0, lane + 4]
            score[g, rows // 4 * 4 + r] = (dot[0, 0] + dot[0, 2]) + (dot[0, 1] + dot[0, 3])
        for g in range(group):
            red[0] = run_max[g]
            for r in range(rows):
                red[0] = T.max(red[0], score[g, r])
            # every lane of the chunk (rows past ``rows`` are computed and never read)
            for r in T.vectorized(CHUNK):
                score[g, r] = _exp2(score[g, r] - red[0])
            red[1] = T.float32(0)
            for r in range(rows):
                red[1] = red[1] + score[g, r]
            rescale = T.exp2(run_max[g] - red[0])
            run_sum[g] = run_sum[g] * rescale + red[1]
            run_max[g] = red[0]
            for d in T.vectorized(dim):
                acc_o[g, d] = acc_o[g, d] * rescale
            for r in range(rows):
                for d in T.vectorized(dim):
                    acc_o[g, d] = acc_o[g, d] + score[g, r] * load_f32(
                        vf, v_base + r * v_stride + d
                    )

    @T.macro
    def finish(st: Any, output: Any, lse: Any, row: Any, kv_head: Any) -> None:
        acc_o, run_max, run_sum = st[1], st[2], st[3]
        for g in range(group):
            for d in T.vectorized(dim):
                output[row, kv_head * group + g, d] = rounded_for(output, acc_o[g, d] / run_sum[g])
            lse[row, kv_head * group + g] = run_max[g] + T.log2(run_sum[g])

    @T.macro
    def attend_pages(st: Any, pages: Any, flat: Any, keys: Any, values: Any, first: Any,
                     seen: Any, kv_head: Any, rotary: Any, k_pos: Any, rope_scale: Any,
                     rope_theta: Any) -> None:  # fmt: skip
        """The first ``seen`` cached positions of a sequence whose page numbers start at
        ``values[first]`` (``flat``: the pages as one array; ``keys``: scratch for keys rotated
        in place, inline RoPE only, position ``k_pos`` onwards)."""
        for page in range((seen + CHUNK - 1) // CHUNK):
            page_no = values[first + page]
            rows = T.min(CHUNK, seen - page * CHUNK)
            k_base = ((page_no * 2) * hk + kv_head) * CHUNK * dim
            v_base = ((page_no * 2 + 1) * hk + kv_head) * CHUNK * dim
            if rotary == 1:
                for r, d in T.grid(rows, dim):
                    keys[r * dim + d] = _rotated(
                        pages,
                        (page_no, 0, kv_head, r, d),
                        T.Cast("float32", k_pos + page * CHUNK + r) * rope_scale,
                        dim,
                        rope_theta,
                        rope_scaling,
                    )
                attend(st, keys, flat, 0, v_base, dim, dim, rows)
            else:
                attend(st, flat, flat, k_base, v_base, dim, dim, rows)

    return start, attend, finish, attend_pages


def _scratch(group: int, dim: int) -> Any:
    """A task's scratch buffers, in the order the macros take them (on the stack while under
    1 KiB, i.e. group * head dim <= 256, else a workspace allocation per task)."""
    from tvm.script import tirx as T

    return (
        T.alloc_buffer((group, dim), "float32"),
        T.alloc_buffer((group, dim), "float32"),
        T.alloc_buffer((group,), "float32"),
        T.alloc_buffer((group,), "float32"),
        T.alloc_buffer((group, CHUNK), "float32"),
        T.alloc_buffer((4, LANES), "float32"),
        T.alloc_buffer((2,), "float32"),
    )


def paged_decode_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    rope_scaling: dict[str, Any],
    dtype: str = "float32",
) -> Any:
    """Decode attention over the paged cache (no sliding window), ``dtype`` data, ``head_dim`` a
    multiple of 8; arguments as TVM's ``batch_decode_paged_kv_cpu``."""
    from tvm.script import tirx as T

    hq, hk, dim, psz = num_qo_heads, num_kv_heads, head_dim, CHUNK
    group = hq // hk
    start, attend, finish, attend_pages = _attention_macros(hq, hk, dim, rope_scaling)

    @T.prim_func(private=True)
    def kernel(
        q_handle: T.handle,
        pages_handle: T.handle,
        indptr_handle: T.handle,
        values_handle: T.handle,
        last_len_handle: T.handle,
        k_rope_handle: T.handle,
        q_rope_handle: T.handle,
        out_handle: T.handle,
        lse_handle: T.handle,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        batch = T.int32()
        nnz_pages = T.int32()
        max_pages = T.int32()
        off_indptr = T.int32()
        off_values = T.int32()
        off_last = T.int32()
        off_krope = T.int32()
        off_qrope = T.int32()
        query = T.match_buffer(q_handle, (batch, hq, dim), dtype)
        pages = T.match_buffer(pages_handle, (max_pages, 2, hk, psz, dim), dtype)
        indptr = T.match_buffer(indptr_handle, (batch + 1,), "int32", elem_offset=off_indptr)
        values = T.match_buffer(values_handle, (nnz_pages,), "int32", elem_offset=off_values)
        last_len = T.match_buffer(last_len_handle, (batch,), "int32", elem_offset=off_last)
        k_rope = T.match_buffer(k_rope_handle, (batch,), "int32", elem_offset=off_krope)
        q_rope = T.match_buffer(q_rope_handle, (batch,), "int32", elem_offset=off_qrope)
        output = T.match_buffer(out_handle, (batch, hq, dim), dtype)
        lse = T.match_buffer(lse_handle, (batch, hq), "float32")
        flat = T.decl_buffer((max_pages * 2 * hk * psz * dim,), dtype, data=pages.data)
        for task in T.parallel(batch * hk):
            st = _scratch(group, dim)
            keys = T.alloc_buffer((psz * dim,), "float32")  # rotated keys (inline RoPE only)
            seq = task // hk
            kv_head = task % hk
            first = indptr[seq]
            n_pages = indptr[seq + 1] - first
            kv_len = T.if_then_else(n_pages > 0, (n_pages - 1) * psz + last_len[seq], 0)
            start(st, query, seq, kv_head, rotary_mode, q_rope[seq], rope_scale, rope_theta,
                  sm_scale * T.float32(LOG2E))  # fmt: skip
            attend_pages(st, pages, flat, keys, values, first, kv_len, kv_head, rotary_mode,
                         k_rope[seq], rope_scale, rope_theta)  # fmt: skip
            finish(st, output, lse, seq, kv_head)

    return kernel


def paged_prefill_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    rope_scaling: dict[str, Any],
    dtype: str = "float32",
) -> Any:
    """Queries of several positions per sequence against the sequence's cached pages (no
    sliding window; ``causal`` masks as TVM's: row ``i`` of ``n`` sees ``len - n + i + 1``
    positions), ``dtype`` data; arguments as TVM's ``batch_prefill_paged_kv_cpu``."""
    from tvm.script import tirx as T

    hq, hk, dim, psz = num_qo_heads, num_kv_heads, head_dim, CHUNK
    group = hq // hk
    start, attend, finish, attend_pages = _attention_macros(hq, hk, dim, rope_scaling)

    @T.prim_func(private=True)
    def kernel(
        q_handle: T.handle,
        q_indptr_handle: T.handle,
        pages_handle: T.handle,
        indptr_handle: T.handle,
        values_handle: T.handle,
        last_len_handle: T.handle,
        k_rope_handle: T.handle,
        q_rope_handle: T.handle,
        out_handle: T.handle,
        lse_handle: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        batch = T.int32()
        total = T.int32()
        nnz_pages = T.int32()
        max_pages = T.int32()
        off_qindptr = T.int32()
        off_indptr = T.int32()
        off_values = T.int32()
        off_last = T.int32()
        off_krope = T.int32()
        off_qrope = T.int32()
        query = T.match_buffer(q_handle, (total, hq, dim), dtype)
        q_indptr = T.match_buffer(q_indptr_handle, (batch + 1,), "int32", elem_offset=off_qindptr)
        pages = T.match_buffer(pages_handle, (max_pages, 2, hk, psz, dim), dtype)
        indptr = T.match_buffer(indptr_handle, (batch + 1,), "int32", elem_offset=off_indptr)
        values = T.match_buffer(values_handle, (nnz_pages,), "int32", elem_offset=off_values)
        last_len = T.match_buffer(last_len_handle, (batch,), "int32", elem_offset=off_last)
        k_rope = T.match_buffer(k_rope_handle, (batch,), "int32", elem_offset=off_krope)
        q_rope = T.match_buffer(q_rope_handle, (total,), "int32", elem_offset=off_qrope)
        output = T.match_buffer(out_handle, (total, hq, dim), dtype)
        lse = T.match_buffer(lse_handle, (total, hq), "float32")
        flat = T.decl_buffer((max_pages * 2 * hk * psz * dim,), dtype, data=pages.data)
        for seq in range(batch):
            q_first = q_indptr[seq]
            q_len = q_indptr[seq + 1] - q_first
            first = indptr[seq]
            n_pages = indptr[seq + 1] - first
            kv_len = T.if_then_else(n_pages > 0, (n_pages - 1) * psz + last_len[seq], 0)
            for task in T.parallel(q_len * hk):
                st = _scratch(group, dim)
                keys = T.alloc_buffer((psz * dim,), "float32")
                row = q_first + task // hk
                kv_head = task % hk
                seen = T.max(T.if_then_else(causal > 0, kv_len - q_len + task // hk + 1, kv_len), 0)
                start(st, query, row, kv_head, rotary_mode, q_rope[row], rope_scale,
                      rope_theta, sm_scale * T.float32(LOG2E))  # fmt: skip
                attend_pages(st, pages, flat, keys, values, first, seen, kv_head, rotary_mode,
                             k_rope[seq], rope_scale, rope_theta)  # fmt: skip
                finish(st, output, lse, row, kv_head)

    return kernel


def ragged_prefill_attention(
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    rope_scaling: dict[str, Any],
    dtype: str = "float32",
) -> Any:
    """Queries against keys/values given as ragged arrays (the positions being prefilled),
    ``causal`` as in ``paged_prefill_attention``, ``dtype`` data, one head dim for keys and values;
    arguments as TVM's ``batch_prefill_ragged_kv`` (CPU)."""
    from tvm.script import tirx as T

    hq, hk, dim = num_qo_heads, num_kv_heads, head_dim
    group = hq // hk
    start, attend, finish, attend_pages = _attention_macros(hq, hk, dim, rope_scaling)

    @T.prim_func(private=True)
    def kernel(
        q_handle: T.handle,
        q_indptr_handle: T.handle,
        k_handle: T.handle,
        v_handle: T.handle,
        kv_indptr_handle: T.handle,
        q_rope_handle: T.handle,
        k_rope_handle: T.handle,
        out_handle: T.handle,
        lse_handle: T.handle,
        causal: T.int32,
        rotary_mode: T.int32,
        rope_scale: T.float32,
        rope_theta: T.float32,
        sm_scale: T.float32,
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        batch = T.int32()
        q_total = T.int32()
        kv_total = T.int32()
        off_qindptr = T.int32()
        off_kvindptr = T.int32()
        off_qrope = T.int32()
        off_krope = T.int32()
        query = T.match_buffer(q_handle, (q_total, hq, dim), dtype)
        q_indptr = T.match_buffer(q_indptr_handle, (batch + 1,), "int32", elem_offset=off_qindptr)
        key = T.match_buffer(k_handle, (kv_total, hk, dim), dtype)
        value = T.match_buffer(v_handle, (kv_total, hk, dim), dtype)
        kv_indptr = T.match_buffer(
            kv_indptr_handle, (batch + 1,), "int32", elem_offset=off_kvindptr
        )
        q_rope = T.match_buffer(q_rope_handle, (q_total,), "int32", elem_offset=off_qrope)
        k_rope = T.match_buffer(k_rope_handle, (batch,), "int32", elem_offset=off_krope)
        output = T.match_buffer(out_handle, (q_total, hq, dim), dtype)
        lse = T.match_buffer(lse_handle, (q_total, hq), "float32")
        kf = T.decl_buffer((kv_total * hk * dim,), dtype, data=key.data)
        vf = T.decl_buffer((kv_total * hk * dim,), dtype, data=value.data)
        for seq in range(batch):
            q_first = q_indptr[seq]
            q_len = q_indptr[seq + 1] - q_first
            kv_first = kv_indptr[seq]
            kv_len = kv_indptr[seq + 1] - kv_first
            for task in T.parallel(q_len * hk):
                st = _scratch(group, dim)
                keys = T.alloc_buffer((CHUNK * dim,), "float32")
                row = q_first + task // hk
                kv_head = task % hk
                seen = T.max(T.if_then_else(causal > 0, kv_len - q_len + task // hk + 1, kv_len), 0)
                start(st, query, row, kv_head, rotary_mode, q_rope[row], rope_scale,
                      rope_theta, sm_scale * T.float32(LOG2E))  # fmt: skip
                for chunk in range((seen + CHUNK - 1) // CHUNK):
                    rows = T.min(CHUNK, seen - chunk * CHUNK)
                    base = ((kv_first + chunk * CHUNK) * hk + kv_head) * dim
                    if rotary_mode == 1:
                        for r, d in T.grid(rows, dim):
                            keys[r * dim + d] = _rotated(
                                key,
                                (kv_first + chunk * CHUNK + r, kv_head, d),
                                T.Cast("float32", k_rope[seq] + chunk * CHUNK + r) * rope_scale,
                                dim,
                                rope_theta,
                                rope_scaling,
                            )
                        attend(st, keys, vf, 0, base, dim, hk * dim, rows)
                    else:
                        attend(st, kf, vf, base, base, hk * dim, hk * dim, rows)
                finish(st, output, lse, row, kv_head)

    return kernel


def split_rotary(
    theta: float,
    scale: float,
    head_dim: int,
    num_q_heads: int,
    num_kv_heads: int,
    rope_scaling: dict[str, Any],
    dtype: str = "float32",
) -> Any:
    """Fused q/k/v split with RoPE on q and k (rotary dim = head dim), float32 arithmetic on
    ``dtype`` data; arguments as TVM's ``llama_rope_with_position_map`` kernel."""
    from tvm import tirx
    from tvm.script import tirx as T

    hq, hk, dim = num_q_heads, num_kv_heads, head_dim
    heads = hq + 2 * hk
    half = dim // 2
    theta_c = tirx.const(theta, "float32")
    scale_c = tirx.const(scale, "float32")

    @T.prim_func(private=True)
    def kernel(
        qkv_handle: T.handle,
        pos_handle: T.handle,
        q_handle: T.handle,
        k_handle: T.handle,
        v_handle: T.handle,
        apply_rope: T.int64,
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        seq_len = T.int32()
        off_pos = T.int32()
        qkv = T.match_buffer(qkv_handle, (seq_len, heads, dim), dtype)
        q = T.match_buffer(q_handle, (seq_len, hq, dim), dtype)
        k = T.match_buffer(k_handle, (seq_len, hk, dim), dtype)
        v = T.match_buffer(v_handle, (seq_len, hk, dim), dtype)
        position = T.match_buffer(pos_handle, (seq_len,), "int32", elem_offset=off_pos)
        for s in T.parallel(seq_len):
            cos = T.alloc_buffer((dim,), "float32")
            sin = T.alloc_buffer((dim,), "float32")  # signed: -sin on the first half
            for d in range(dim):
                if apply_rope > 0:
                    at = T.Cast("float32", position[s]) * scale_c
                    cos[d] = _rope_angle(rope_scaling, 0, at, d, dim, theta_c)
                    sin[d] = T.if_then_else(
                        d < half,
                        -_rope_angle(rope_scaling, 1, at, d, dim, theta_c),
                        _rope_angle(rope_scaling, 1, at, d, dim, theta_c),
                    )
                else:
                    cos[d] = T.float32(1)
                    sin[d] = T.float32(0)
            for h in range(hq):
                for d in T.vectorized(half):
                    q[s, h, d] = rounded_for(
                        q,
                        cos[d] * load_f32(qkv, (s, h, d))
                        + sin[d] * load_f32(qkv, (s, h, d + half)),
                    )
                    q[s, h, d + half] = rounded_for(
                        q,
                        cos[d + half] * load_f32(qkv, (s, h, d + half))
                        + sin[d + half] * load_f32(qkv, (s, h, d)),
                    )
            for h in range(hk):
                for d in T.vectorized(half):
                    k[s, h, d] = rounded_for(
                        k,
                        cos[d] * load_f32(qkv, (s, hq + h, d))
                        + sin[d] * load_f32(qkv, (s, hq + h, d + half)),
                    )
                    k[s, h, d + half] = rounded_for(
                        k,
                        cos[d + half] * load_f32(qkv, (s, hq + h, d + half))
                        + sin[d + half] * load_f32(qkv, (s, hq + h, d)),
                    )
            for h in range(hk):
                for d in T.vectorized(dim):
                    v[s, h, d] = qkv[s, hq + hk + h, d]

    return kernel


def install(
    bb: Any,
    *,
    num_kv_heads: int,
    num_qo_heads: int,
    head_dim: int,
    v_head_dim: int,
    dtype: str,
    rope_theta: float,
    rope_scale: float,
    rope_scaling: dict[str, Any],
) -> list[str]:
    """Replace TVM's CPU attention (decode, paged and ragged prefill) and RoPE-split kernels in
    the module ``bb`` is building with this module's, where they apply; the names of the
    functions replaced. Each replacement carries the attribute ``mlcpatch.kernel`` naming the
    function that made it."""
    if dtype not in DTYPES or head_dim % (2 * LANES) or num_qo_heads % num_kv_heads:
        return []
    if v_head_dim != head_dim:
        return []  # the kernels assume one head dim for keys and values
    mod = bb.get()
    replaced = []
    kernels = {
        "tir_attention_decode_cpu": ("paged_decode_attention", paged_decode_attention),
        "tir_attention_prefill_cpu": ("paged_prefill_attention", paged_prefill_attention),
        "tir_attention_prefill_ragged_cpu": ("ragged_prefill_attention", ragged_prefill_attention),
    }
    makers = {
        name: (maker, lambda f=f: f(num_kv_heads, num_qo_heads, head_dim, rope_scaling, dtype))
        for name, (maker, f) in kernels.items()
    }
    # The split runs with or without RoPE (the cache passes apply_rope); only the angles vary.
    if rope_scaling.get("rope_type") in _TABLE_ROPES:
        makers["tir_split_rotary"] = (
            "split_rotary",
            lambda: split_rotary(
                rope_theta, rope_scale, head_dim, num_qo_heads, num_kv_heads, rope_scaling, dtype
            ),
        )
    for name, (maker, make) in makers.items():
        if not any(gv.name_hint == name for gv in mod.get_global_vars()):
            continue
        gvar = mod.get_global_var(name)
        old = mod[gvar]
        new = make()
        if old.attrs:
            new = new.with_attrs(dict(old.attrs))
        new = new.with_attr("tirx.noalias", True).with_attr("mlcpatch.kernel", maker)
        bb.update_func(gvar, new)
        replaced.append(name)
    return replaced
