"""Kernels written by hand in TVMScript for the CPU (llvm) target, where a schedule of the
generic matmul could not reach the instruction mix wanted. cpu_schedule.py decides which kernel
a PrimFunc gets; these only build the replacement, with the same arguments in the same order.

- ``q4_gemv``: 4-bit decode, three vector operations per 8 weights.
- ``gemm_f32`` / ``gemm_q4``: many rows (prefill, batched decode) on CPUs with 16 256-bit
  registers (AVX2 + FMA). Each task owns ``NR`` = 16 output columns. With at least
  ``PACK_ROWS`` rows, the task's weights are copied (4-bit: dequantized) once, transposed, into
  a ``[k, 16]`` panel, and a register-blocked micro-kernel keeps a 6 x 16 block of outputs in
  12 vector registers: per input position, 2 weight loads and 6 broadcasts feed 12 FMAs. With
  fewer rows the copy would cost more than it saves: each output is a dot product of 8-lane
  vectors, four columns at a time, with those columns' weights kept in L1 across the rows.

Sums run in another order than the generic kernels' (along k, one FMA chain per output in the
micro-kernel): results move by float rounding only, within the numerics tests' tolerances.
"""

from __future__ import annotations

from typing import Any

from mlcpatch.build.quantization.q4_format import GROUP_SIZE, PER_WORD, quantized_shapes

LANES = 8  # f32 lanes of one AVX2 register (two SSE2 ones); equal to PER_WORD
TILE_N = 4  # output rows (GEMV) or columns (GEMM) of one task in cpu_schedule's TIR schedules
NR = 16  # output columns of one GEMM task: two 8-lane registers
MR = 6  # rows of the micro-kernel's register block: 6 x 2 accumulators + 2 weights + 1 input
# From this many rows on, a GEMM task packs its weights. The (scalar, transposing) copy costs
# about as much as 40 rows gain from the micro-kernel: SmolLM2 on one znver3 core, linears of
# one forward: 16 rows 183 ms packed / 87 ms not; 32: 174 / 173; 71: 274 / 344.
PACK_ROWS = 40


def q4_gemv(n: int, k: int, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Any:
    """A hand-written 4-bit GEMV (f32 input, f32 scales, ``k`` a multiple of 64) doing three
    vector operations per 8 weights: AND, int-to-float, FMA.

    - No shift: code ``e`` of a word is masked in place, ``q * 16**e``, and its input is stored
      pre-scaled by ``16**-e`` (exact: a power of two), so the product is ``q * x``. The top code
      (bits 28..31) is shifted down instead, as a masked value would not fit a signed int.
    - No per-weight ``- 7`` or scale: within a lane's 8 codes, ``sum (q - 7) x`` is
      ``sum q x - 7 sum x``; the second term is computed once per call for all rows, and the
      scale multiplies the lane's sum once (the lanes of 8 consecutive words span two groups).
    - One row a task over the thread pool: its words are one sequential stream, which the
      hardware prefetcher follows (4 rows a task, 4 streams 768 bytes apart, streamed SmolLM2's
      k=1536 down-projection from memory at half the rate: 3.4 against 6.2 GB/s, 1 znver3
      core); its accumulators stay on the stack (scope "global" under 1 KiB is an alloca on the
      CPU; "local" would be a workspace call per task).
    """
    from tvm.script import tirx as T

    (_, words_per_row), (_, groups) = quantized_shapes((n, k))
    blocks = k // (LANES * PER_WORD)
    top = PER_WORD - 1

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer(x_shape, "float32"),
        w: T.Buffer((n, words_per_row), "uint32"),
        s: T.Buffer((n, groups), "float32"),
        out: T.Buffer(out_shape, "float32"),
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((k,), "float32", data=x.data)
        of = T.decl_buffer((n,), "float32", data=out.data)
        xs = T.alloc_buffer((blocks, PER_WORD, LANES), "float32")  # x[64 b + 8 l + e] / 16**e
        xm = T.alloc_buffer((blocks, LANES), "float32")  # -7 * sum_e x[64 b + 8 l + e]
        for b, e, lane in T.grid(blocks, PER_WORD, LANES):
            # 16**-e built from its exponent bits (exact); the top code is shifted, so 1.
            xs[b, e, lane] = xf[64 * b + 8 * lane + e] * T.reinterpret(
                "float32", T.shift_left(T.if_then_else(e == top, 127, 127 - 4 * e), 23)
            )
        for b, lane in T.grid(blocks, LANES):
            xm[b, lane] = T.float32(0)
            for e in range(PER_WORD):
                xm[b, lane] = xm[b, lane] - T.float32(7) * xf[64 * b + 8 * lane + e]
        for row in T.parallel(n):
            acc = T.alloc_buffer((LANES,), "float32")
            part = T.alloc_buffer((LANES,), "float32")
            for lane in T.vectorized(LANES):
                acc[lane] = T.float32(0)
            for b in range(blocks):
                for lane in T.vectorized(LANES):
                    part[lane] = xm[b, lane]
                for e in T.unroll(PER_WORD):
                    # One expression on purpose: the word bound to a name inside the
                    # vectorized loop (a Let) came out wrong (relative error 0.5).
                    for lane in T.vectorized(LANES):
                        part[lane] = (
                            part[lane]
                            + T.Cast(
                                "float32",
                                T.reinterpret(
                                    "int32",
                                    T.if_then_else(
                                        e == top,
                                        T.shift_right(w[row, b * 8 + lane], T.uint32(28)),
                                        T.bitwise_and(
                                            w[row, b * 8 + lane],
                                            T.shift_left(T.uint32(15), T.Cast("uint32", 4 * e)),
                                        ),
                                    ),
                                ),
                            )
                            * xs[b, e, lane]
                        )
                for lane in T.vectorized(LANES):
                    # lanes 0-3 are in group 2b, lanes 4-7 in group 2b + 1
                    acc[lane] = acc[lane] + s[row, b * 2 + lane // 4] * part[lane]
            of[row] = T.float32(0)
            for lane in range(LANES):
                of[row] = of[row] + acc[lane]

    return kernel


def _gemm_task(n: int, k: int) -> Any:
    """A macro computing one GEMM task's 16 columns for every row, in one of two ways (see the
    module doc)."""
    from tvm.script import tirx as T

    @T.macro
    def packed_rows(xf: Any, of: Any, panel: Any, col0: Any, rows: Any) -> None:
        for blk in range(rows // MR):
            acc = T.alloc_buffer((MR, NR), "float32")  # 384 bytes: stack, then registers
            for i in T.unroll(MR):
                for j in T.vectorized(NR):
                    acc[i, j] = T.float32(0)
            for kk in range(k):
                for i in T.unroll(MR):
                    for j in T.vectorized(NR):
                        acc[i, j] = acc[i, j] + xf[(blk * MR + i) * k + kk] * panel[kk, j]
            for i in T.unroll(MR):
                for j in T.vectorized(NR):
                    of[(blk * MR + i) * n + col0 * NR + j] = acc[i, j]
        for row in range(rows // MR * MR, rows):
            acc1 = T.alloc_buffer((NR,), "float32")
            for j in T.vectorized(NR):
                acc1[j] = T.float32(0)
            for kk in range(k):
                for j in T.vectorized(NR):
                    acc1[j] = acc1[j] + xf[row * k + kk] * panel[kk, j]
            for j in T.vectorized(NR):
                of[row * n + col0 * NR + j] = acc1[j]

    @T.macro
    def direct_rows(xf: Any, of: Any, w: Any, w_row0: Any, col0: Any, rows: Any) -> None:
        for quad in range(NR // 4):  # four columns' weights stay in L1 across the rows
            for row in range(rows):
                acc = T.alloc_buffer((4, LANES), "float32")
                for c in T.unroll(4):
                    for lane in T.vectorized(LANES):
                        acc[c, lane] = T.float32(0)
                for kb in range(k // LANES):
                    for c in T.unroll(4):
                        for lane in T.vectorized(LANES):
                            acc[c, lane] = (
                                acc[c, lane]
                                + xf[row * k + kb * LANES + lane]
                                * w[w_row0 + quad * 4 + c, kb * LANES + lane]
                            )
                for c in T.unroll(4):
                    of[row * n + col0 * NR + quad * 4 + c] = T.float32(0)
                    for lane in range(LANES):
                        of[row * n + col0 * NR + quad * 4 + c] = (
                            of[row * n + col0 * NR + quad * 4 + c] + acc[c, lane]
                        )

    @T.macro
    def task(xf: Any, of: Any, w: Any, w_row0: Any, col0: Any, rows: Any) -> None:
        """Columns ``col0 * 16 ..`` of every row, from weight rows ``w_row0 ..`` of ``w``."""
        if rows >= PACK_ROWS:
            panel = T.alloc_buffer((k, NR), "float32")
            for j, kk in T.grid(NR, k):
                panel[kk, j] = w[w_row0 + j, kk]
            packed_rows(xf, of, panel, col0, rows)
        else:
            direct_rows(xf, of, w, w_row0, col0, rows)

    return task


def gemm_f32(n: int, k: int) -> Any:
    """``out[a, b, :] = W @ x[a, b, :]`` for f32 ``W [n, k]``, any rows ``a x b``; ``n % 16 == 0``
    and ``k % 8 == 0``."""
    from tvm.script import tirx as T

    task = _gemm_task(n, k)

    @T.prim_func(private=True)
    def kernel(var_x: T.handle, w: T.Buffer((n, k), "float32"), var_out: T.handle) -> None:
        T.func_attr({"tirx.noalias": True})
        d0 = T.int64()
        d1 = T.int64()
        x = T.match_buffer(var_x, (d0, d1, k), "float32")
        out = T.match_buffer(var_out, (d0, d1, n), "float32")
        xf = T.decl_buffer((d0 * d1 * k,), "float32", data=x.data)
        of = T.decl_buffer((d0 * d1 * n,), "float32", data=out.data)
        for col0 in T.parallel(n // NR):
            task(xf, of, w, col0 * NR, col0, d0 * d1)

    return kernel


def gemm_q4(n: int, k: int) -> Any:
    """As ``gemm_f32`` for 4-bit weights (q4_format.py, f32 scales): each task first
    dequantizes its 16 weight rows, 8 codes of a word at a time, into a row-major tile."""
    from tvm.script import tirx as T

    (_, words_per_row), (_, groups) = quantized_shapes((n, k))
    task = _gemm_task(n, k)

    @T.prim_func(private=True)
    def kernel(
        var_x: T.handle,
        q: T.Buffer((n, words_per_row), "uint32"),
        s: T.Buffer((n, groups), "float32"),
        var_out: T.handle,
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        d0 = T.int64()
        d1 = T.int64()
        x = T.match_buffer(var_x, (d0, d1, k), "float32")
        out = T.match_buffer(var_out, (d0, d1, n), "float32")
        xf = T.decl_buffer((d0 * d1 * k,), "float32", data=x.data)
        of = T.decl_buffer((d0 * d1 * n,), "float32", data=out.data)
        for col0 in T.parallel(n // NR):
            tile = T.alloc_buffer((NR, k), "float32")
            for j, word in T.grid(NR, k // PER_WORD):
                for e in T.vectorized(PER_WORD):
                    tile[j, word * PER_WORD + e] = (
                        T.Cast(
                            "float32",
                            T.bitwise_and(
                                T.shift_right(q[col0 * NR + j, word], T.Cast("uint32", e * 4)),
                                T.uint32(15),
                            ),
                        )
                        - T.float32(7)
                    ) * s[col0 * NR + j, (word * PER_WORD + e) // GROUP_SIZE]
            task(xf, of, tile, 0, col0, d0 * d1)

    return kernel
