"""Kernels written by hand in TVMScript for the CPU (llvm) target, where a schedule of the
generic matmul could not reach the instruction mix wanted. cpu_schedule.py decides which kernel
a PrimFunc gets; these only build the replacement, with the same arguments in the same order.

- ``q4_gemv``: 4-bit decode, three vector operations per 8 weights (on wasm32 in the order V8
  runs best: see ``_q4_row_dots``).
- ``gemm_f32`` / ``gemm_q4``: many rows (prefill, batched decode) on CPUs with 16 256-bit
  registers (AVX2 + FMA). Each task owns ``NR`` = 16 output columns. With at least
  ``PACK_ROWS`` rows (4-bit: ``Q4_PACK_ROWS``), the task's weights are copied (4-bit:
  dequantized) once, transposed, into a ``[k, 16]`` panel, and a register-blocked micro-kernel
  keeps a 6 x 16 block of outputs in 12 vector registers: per input position, 2 weight loads
  and 6 broadcasts feed 12 FMAs. With fewer rows the copy would cost more than it saves, and
  each output is a dot product of 8-lane vectors: f32 up to ``COLUMN_ROWS`` rows one column at
  a time (one sequential weight stream, the sum split over several accumulators), beyond that
  four columns at a time (each input load feeds four FMAs); 4-bit through ``q4_gemv``'s
  kernel, up to four rows sharing each decoded word. Dot products end in a pairwise sum of
  their lanes. On wasm32 the same kernels run with a ``WASM_MR`` x 16 block (4-bit: packed from
  ``WASM_Q4_PACK_ROWS`` rows on).

The kernels also take float16 operands (``dtypes``: q4f16_1's activations, scales and outputs,
q0f16's weights too): every load is widened to float32 and each output rounded once (CPUs have
no float16 arithmetic).

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
# On wasm32 (16 128-bit registers, each 16-column row of the block is 4 of them): 2 rows, 8
# accumulators. SmolLM2 prefill of 71 tokens in Chromium, one thread, best of 9: q4f32_1 583 ms
# with the generic GEMM schedule, 510 with 2 rows, 687 with 3 (spills); q0f32 565 -> 489 ms.
WASM_MR = 2
# From this many rows on, a GEMM task packs its weights: the (scalar, transposing) copy costs
# about as much as the micro-kernel gains over dot products. SmolLM2 prefill on one znver4 core,
# dot products / packed: 48 rows 185 / 210 ms, 64: 247 / 264, 96: 308 / 328, 128: 444 / 404.
# Packing from 112 rows was 4-15% faster for 48-96 rows but moved a ragged batch's hidden states
# by 1.2e-5 against one-question runs (tiny Mistral), past the 1e-5 batching is held to; kept
# at 40 until that is understood.
PACK_ROWS = 40
# 4-bit: from here on the task dequantizes a tile and packs it; below, each row is a GEMV (one
# FMA per 8 weights per row as well, plus the decode): 16 rows 114 / 148 ms, 32: 179 / 171,
# 48: 279 / 211, 64: 336 / 249.
Q4_PACK_ROWS = 32
# On wasm32 decoding a word costs more against the 2 x 16 block's products: SmolLM2 prefill in
# Chromium, one thread, rows through the GEMV's kernel / packed: 8 rows 150 / 194 ms, 24 rows
# 382 / 296 (straight lines through these cross near 14 rows).
WASM_Q4_PACK_ROWS = 16
CHAINS = 8  # independent FMA chains of an unpacked dot-product block (latency 4 x 2 a cycle)
WIDE_COLUMNS = 4  # columns of a block beyond COLUMN_ROWS rows
# Up to this many rows (f32), each column's weights are streamed alone (see ``_gemm_task``);
# SmolLM2's batched decode step, 1 znver4 thread, a column / four at a time: 5 rows 35 / 56 ms,
# 8: 64 / 68; 16: 133 / 99.
COLUMN_ROWS = 8
Q4_ROWS_AT_ONCE = 4  # rows sharing one decoded 4-bit word in the few-rows 4-bit kernel
# Dtypes of a 4-bit kernel's input, scales and output: q4f32_1's. q4f16_1's layers have float16
# ones (the logits may stay float32).
F32 = ("float32", "float32", "float32")


def load_f32(buf: Any, index: Any) -> Any:
    """``buf[index]`` as float32: float16 loads widened (exact), float32 ones as they are. The
    kernels compute in float32 whatever their operands' dtype (CPUs have no float16
    arithmetic); cpu_attention.py's as well."""
    from tvm import tirx

    value = buf[index]
    return value if str(buf.dtype) == "float32" else tirx.Cast("float32", value)


def rounded_for(buf: Any, value: Any) -> Any:
    """A float32 ``value`` to store in ``buf``: rounded once to its dtype."""
    from tvm import tirx

    return value if str(buf.dtype) == "float32" else tirx.Cast(str(buf.dtype), value)


def _pairwise(terms: list[Any]) -> Any:
    """``terms`` summed as a tree: log2(n) dependent additions instead of n."""
    while len(terms) > 1:
        half = len(terms) // 2
        terms = [terms[j] + terms[j + half] for j in range(half)]
    return terms[0]


def lane_sum(acc: Any, *index: Any) -> Any:
    """``acc[*index, 0:8]`` summed pairwise: three dependent additions instead of eight (a
    running sum in the output, stored and reloaded per lane, cost as much as a short dot
    product's multiplications)."""
    return _pairwise([acc[(*index, lane)] for lane in range(LANES)])


def part_sum(acc: Any, parts: int, row: Any, col: Any, lane: Any) -> Any:
    """``acc[row, col, 0:parts, lane]`` summed pairwise."""
    return _pairwise([acc[row, col, p, lane] for p in range(parts)])


def q4_gemv(
    n: int,
    k: int,
    x_shape: tuple[int, ...],
    out_shape: tuple[int, ...],
    wasm: bool = False,
    dtypes: tuple[str, str, str] = F32,
) -> Any:
    """A hand-written 4-bit GEMV (``k`` a multiple of 64) doing three vector operations per 8
    weights: AND, int-to-float, FMA.

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
    - ``wasm``: the order of operations for wasm32 (see ``_q4_row_dots``).
    - ``dtypes``: of the input, the scales and the output (q4f16_1: float16 ones). Loads are
      widened to float32 and the result rounded once: every product and sum is float32, as
      in q4f32_1 (a CPU without float16 arithmetic would otherwise convert and round at every
      step).
    """
    from tvm.script import tirx as T

    x_dtype, s_dtype, out_dtype = dtypes
    (_, words_per_row), (_, groups) = quantized_shapes((n, k))
    prescale, row_dots = _q4_prescale(k, wasm), _q4_row_dots(n, k, 1, wasm)
    blocks = k // (LANES * PER_WORD)

    @T.prim_func(private=True)
    def kernel(
        x: T.Buffer(x_shape, x_dtype),
        w: T.Buffer((n, words_per_row), "uint32"),
        s: T.Buffer((n, groups), s_dtype),
        out: T.Buffer(out_shape, out_dtype),
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        xf = T.decl_buffer((k,), x_dtype, data=x.data)
        of = T.decl_buffer((n,), out_dtype, data=out.data)
        xs = T.alloc_buffer((1, blocks, PER_WORD, LANES), "float32")
        xm = T.alloc_buffer((1, blocks, LANES), "float32")
        mk = T.alloc_buffer((PER_WORD, LANES), "uint32")
        prescale(xf, xs, xm, mk, 1)
        for row in T.parallel(n):
            row_dots(w, s, xs, xm, mk, of, row, 0)

    return kernel


def _q4_prescale(k: int, wasm: bool = False) -> Any:
    """A macro filling ``xs[r, b, e, lane] = x[r, 64 b + 8 lane + e] / 16**e`` and
    ``xm[r, b, lane] = -7 * sum_e x[r, 64 b + 8 lane + e]`` for ``rows`` input rows (see
    ``q4_gemv``), and on wasm32 the masks ``mk[e, lane] = 15 << 4 e`` (see ``_q4_row_dots``)."""
    from tvm.script import tirx as T

    blocks, top = k // (LANES * PER_WORD), PER_WORD - 1
    masks = PER_WORD if wasm else 0  # native kernels take their masks as constants

    @T.macro
    def prescale(xf: Any, xs: Any, xm: Any, mk: Any, rows: Any) -> None:
        for e, lane in T.grid(masks, LANES):
            mk[e, lane] = T.shift_left(T.uint32(15), T.Cast("uint32", 4 * e))
        for r, b, e, lane in T.grid(rows, blocks, PER_WORD, LANES):
            # 16**-e built from its exponent bits (exact); the top code is shifted, so 1.
            xs[r, b, e, lane] = load_f32(xf, r * k + 64 * b + 8 * lane + e) * T.reinterpret(
                "float32", T.shift_left(T.if_then_else(e == top, 127, 127 - 4 * e), 23)
            )
        for r, b, lane in T.grid(rows, blocks, LANES):
            xm[r, b, lane] = T.float32(0)
            for e in range(PER_WORD):
                xm[r, b, lane] = xm[r, b, lane] - T.float32(7) * load_f32(
                    xf, r * k + 64 * b + 8 * lane + e
                )

    return prescale


def _q4_row_dots(n: int, k: int, rows: int, wasm: bool = False) -> Any:
    """A macro computing ``out[r0 + i, row]`` for ``i < rows`` from weight row ``row``: each
    decoded word feeds all those rows (see ``q4_gemv``); the accumulators stay on the stack
    (scope "global" under 1 KiB is an alloca on the CPU; "local" would be a workspace call).

    ``wasm``: the browser's JIT keeps a wasm function's order of operations (no reassociation,
    no FMA, no loads folded into arithmetic) and rebuilds a 128-bit constant from general
    registers at every use. So the masks are loaded from ``mk`` (filled at run time: LLVM cannot
    fold them back into ``v128.const``), and with one row the eight products of a word are
    summed as a tree (three dependent additions, not eight; with more rows their chains
    interleave). SmolLM2 q4f32_1 decode in headless Chromium, one thread: 29 -> 41 tok/s
    (docs/results/browser-wasm-kernels/)."""
    from tvm.script import tirx as T

    blocks, top = k // (LANES * PER_WORD), PER_WORD - 1

    def code(w: Any, mk: Any, row: Any, b: Any, lane: Any, e: Any) -> Any:
        # One expression on purpose: the word bound to a name inside the vectorized loop (a
        # Let) came out wrong (relative error 0.5). LLVM decodes it once for all the rows.
        word = w[row, b * 8 + lane]
        mask = mk[e, lane] if wasm else T.shift_left(T.uint32(15), T.Cast("uint32", 4 * e))
        if isinstance(e, int):
            value = T.shift_right(word, T.uint32(28)) if e == top else T.bitwise_and(word, mask)
        else:
            value = T.if_then_else(
                e == top, T.shift_right(word, T.uint32(28)), T.bitwise_and(word, mask)
            )
        return T.Cast("float32", T.reinterpret("int32", value))

    @T.macro
    def row_dots(w: Any, s: Any, xs: Any, xm: Any, mk: Any, of: Any, row: Any, r0: Any) -> None:
        acc = T.alloc_buffer((rows, LANES), "float32")
        part = T.alloc_buffer((rows, LANES), "float32")
        for i in T.unroll(rows):
            for lane in T.vectorized(LANES):
                acc[i, lane] = T.float32(0)
        for b in range(blocks):
            for i in T.unroll(rows):
                for lane in T.vectorized(LANES):
                    part[i, lane] = xm[r0 + i, b, lane]
            for e in T.unroll(PER_WORD):
                for i in T.unroll(rows):
                    for lane in T.vectorized(LANES):
                        part[i, lane] = (
                            part[i, lane] + code(w, mk, row, b, lane, e) * xs[r0 + i, b, e, lane]
                        )
            for i in T.unroll(rows):
                for lane in T.vectorized(LANES):
                    # lanes 0-3 are in group 2b, lanes 4-7 in group 2b + 1
                    acc[i, lane] = (
                        acc[i, lane] + load_f32(s, (row, b * 2 + lane // 4)) * part[i, lane]
                    )
        for i in T.unroll(rows):
            of[(r0 + i) * n + row] = rounded_for(of, lane_sum(acc, i))

    @T.macro
    def tree_dot(w: Any, s: Any, xs: Any, xm: Any, mk: Any, of: Any, row: Any, r0: Any) -> None:
        acc = T.alloc_buffer((LANES,), "float32")
        for lane in T.vectorized(LANES):
            acc[lane] = T.float32(0)
        for b in range(blocks):
            for lane in T.vectorized(LANES):
                acc[lane] = acc[lane] + load_f32(s, (row, b * 2 + lane // 4)) * (
                    xm[r0, b, lane]
                    + _pairwise(
                        [code(w, mk, row, b, lane, e) * xs[r0, b, e, lane] for e in range(PER_WORD)]
                    )
                )
        of[r0 * n + row] = rounded_for(of, lane_sum(acc))

    return tree_dot if wasm and rows == 1 else row_dots


def _gemm_task(n: int, k: int, pack_rows: int, mr: int = MR) -> Any:
    """A macro computing one GEMM task's 16 columns for every row, in one of two ways (see the
    module doc): packed from ``pack_rows`` rows on; float32 inputs, float32 or float16 weights
    (widened as loaded) and outputs."""
    from tvm.script import tirx as T

    @T.macro
    def packed_rows(xf: Any, of: Any, panel: Any, col0: Any, rows: Any) -> None:
        for blk in range(rows // mr):
            acc = T.alloc_buffer((mr, NR), "float32")  # 384 bytes: stack, then registers
            for i in T.unroll(mr):
                for j in T.vectorized(NR):
                    acc[i, j] = T.float32(0)
            for kk in range(k):
                for i in T.unroll(mr):
                    for j in T.vectorized(NR):
                        acc[i, j] = acc[i, j] + xf[(blk * mr + i) * k + kk] * panel[kk, j]
            for i in T.unroll(mr):
                for j in T.vectorized(NR):
                    of[(blk * mr + i) * n + col0 * NR + j] = rounded_for(of, acc[i, j])
        for row in range(rows // mr * mr, rows):
            acc1 = T.alloc_buffer((NR,), "float32")
            for j in T.vectorized(NR):
                acc1[j] = T.float32(0)
            for kk in range(k):
                for j in T.vectorized(NR):
                    acc1[j] = acc1[j] + xf[row * k + kk] * panel[kk, j]
            for j in T.vectorized(NR):
                of[row * n + col0 * NR + j] = rounded_for(of, acc1[j])

    def dots(rows: int, cols: int) -> Any:
        """``cols`` adjacent columns of ``rows`` rows as dot products, the sum along k split
        over ``CHAINS // (rows * cols)`` accumulators each, so that CHAINS independent FMA
        chains hide the FMA latency. Each column's weights are a sequential stream: few
        columns at a time (four, each 2.3 KiB, read SmolLM2's weights from memory at half the
        rate of one), but more than one where many rows load the inputs once per column."""
        parts = CHAINS // (rows * cols)
        step = LANES * parts  # k covered by one turn of the unrolled loop

        @T.macro
        def run(xf: Any, of: Any, w: Any, w_row: Any, col: Any, row0: Any) -> None:
            acc = T.alloc_buffer((rows, cols, parts, LANES), "float32")
            red = T.alloc_buffer((rows, cols, LANES), "float32")
            for r in T.unroll(rows):
                for c in T.unroll(cols):
                    for p in T.unroll(parts):
                        for lane in T.vectorized(LANES):
                            acc[r, c, p, lane] = T.float32(0)
            for kb in range(k // step):
                for r in T.unroll(rows):
                    for c in T.unroll(cols):
                        for p in T.unroll(parts):
                            for lane in T.vectorized(LANES):
                                acc[r, c, p, lane] = acc[r, c, p, lane] + xf[
                                    (row0 + r) * k + kb * step + p * LANES + lane
                                ] * load_f32(w, (w_row + c, kb * step + p * LANES + lane))
            for kb in range(k // step * parts, k // LANES):  # k not a multiple of step
                for r in T.unroll(rows):
                    for c in T.unroll(cols):
                        for lane in T.vectorized(LANES):
                            acc[r, c, 0, lane] = acc[r, c, 0, lane] + xf[
                                (row0 + r) * k + kb * LANES + lane
                            ] * load_f32(w, (w_row + c, kb * LANES + lane))
            for r in T.unroll(rows):
                for c in T.unroll(cols):
                    for lane in T.vectorized(LANES):
                        red[r, c, lane] = part_sum(acc, parts, r, c, lane)
                    of[(row0 + r) * n + col + c] = rounded_for(of, lane_sum(red, r, c))

        return run

    # Up to COLUMN_ROWS rows, a column at a time, rows in pairs; beyond, WIDE_COLUMNS columns
    # at a time, rows in blocks that fill the chains; the rows left one at a time.
    wide_rows = CHAINS // WIDE_COLUMNS
    column_pair, column_one = dots(2, 1), dots(1, 1)
    wide_block, wide_one = dots(wide_rows, WIDE_COLUMNS), dots(1, WIDE_COLUMNS)

    @T.macro
    def direct_rows(xf: Any, of: Any, w: Any, w_row0: Any, col0: Any, rows: Any) -> None:
        if rows <= COLUMN_ROWS:
            for c in range(NR):  # one column's weights stay in L1 across the rows
                for pair in range(rows // 2):
                    column_pair(xf, of, w, w_row0 + c, col0 * NR + c, pair * 2)
                if rows % 2 == 1:
                    column_one(xf, of, w, w_row0 + c, col0 * NR + c, rows - 1)
        else:
            for cb in range(NR // WIDE_COLUMNS):
                for blk in range(rows // wide_rows):
                    wide_block(
                        xf,
                        of,
                        w,
                        w_row0 + cb * WIDE_COLUMNS,
                        col0 * NR + cb * WIDE_COLUMNS,
                        blk * wide_rows,
                    )
                for row in range(rows // wide_rows * wide_rows, rows):
                    wide_one(
                        xf, of, w, w_row0 + cb * WIDE_COLUMNS, col0 * NR + cb * WIDE_COLUMNS, row
                    )

    @T.macro
    def task(xf: Any, of: Any, w: Any, w_row0: Any, col0: Any, rows: Any) -> None:
        """Columns ``col0 * 16 ..`` of every row, from weight rows ``w_row0 ..`` of ``w``."""
        if rows >= pack_rows:
            panel = T.alloc_buffer((k, NR), "float32")
            for j, kk in T.grid(NR, k):
                panel[kk, j] = load_f32(w, (w_row0 + j, kk))
            packed_rows(xf, of, panel, col0, rows)
        else:
            direct_rows(xf, of, w, w_row0, col0, rows)

    return task


def gemm_f32(n: int, k: int, wasm: bool = False, dtypes: tuple[str, str, str] = F32) -> Any:
    """``out[a, b, :] = W @ x[a, b, :]`` for float ``W [n, k]``, any rows ``a x b``; ``n % 16 ==
    0`` and ``k % 8 == 0``. ``wasm``: a ``WASM_MR`` x 16 register block. ``dtypes``: of the
    input, the weights and the output: float32, or float16 (q0f16), widened as loaded."""
    from tvm.script import tirx as T

    x_dtype, w_dtype, out_dtype = dtypes
    # float16 inputs are widened into a float32 copy first: the micro-kernel broadcasts every
    # input element, which widened at each use cost a conversion per broadcast (SmolLM2 q0f16
    # prefill of 128 tokens, one znver4 core: 217 -> 342 tok/s)
    task = _gemm_task(n, k, PACK_ROWS, WASM_MR if wasm else MR)

    @T.macro
    def run(xf: Any, of: Any, w: Any, rows: Any) -> None:
        for col0 in T.parallel(n // NR):
            task(xf, of, w, col0 * NR, col0, rows)

    @T.macro
    def widened(xf: Any, of: Any, w: Any, rows: Any) -> None:
        x32 = T.alloc_buffer((rows * k,), "float32")
        for i in range(rows * k):
            x32[i] = T.Cast("float32", xf[i])
        run(x32, of, w, rows)

    dispatch = run if x_dtype == "float32" else widened

    @T.prim_func(private=True)
    def kernel(var_x: T.handle, w: T.Buffer((n, k), w_dtype), var_out: T.handle) -> None:
        T.func_attr({"tirx.noalias": True})
        d0 = T.int64()
        d1 = T.int64()
        x = T.match_buffer(var_x, (d0, d1, k), x_dtype)
        out = T.match_buffer(var_out, (d0, d1, n), out_dtype)
        xf = T.decl_buffer((d0 * d1 * k,), x_dtype, data=x.data)
        of = T.decl_buffer((d0 * d1 * n,), out_dtype, data=out.data)
        dispatch(xf, of, w, d0 * d1)

    return kernel


def gemm_q4(n: int, k: int, wasm: bool = False, dtypes: tuple[str, str, str] = F32) -> Any:
    """As ``gemm_f32`` for 4-bit weights (q4_format.py). From ``Q4_PACK_ROWS`` rows
    on (wasm32: ``WASM_Q4_PACK_ROWS``; or when ``k`` is not a multiple of 64), each task first
    dequantizes its 16 weight rows, 8 codes of a word at a time, into a row-major tile, and
    packs it from there. With fewer rows that copy cost more than the products (batch 2 took 3x
    one row's GEMV): the rows go through ``q4_gemv``'s kernel instead, ``Q4_ROWS_AT_ONCE`` rows
    sharing each decoded word. ``wasm``: a ``WASM_MR`` x 16 register block and the GEMV's wasm
    order. ``dtypes``: as ``q4_gemv``'s (float16 inputs are widened into a float32 copy first
    where the rows are packed)."""
    from tvm.script import tirx as T

    x_dtype, s_dtype, out_dtype = dtypes
    (_, words_per_row), (_, groups) = quantized_shapes((n, k))
    pack_rows = WASM_Q4_PACK_ROWS if wasm else Q4_PACK_ROWS
    task = _gemm_task(n, k, pack_rows, WASM_MR if wasm else MR)
    blocks = k // (LANES * PER_WORD)
    prescale = _q4_prescale(k, wasm)
    row_dots, row_pair, row_dot = (_q4_row_dots(n, k, r, wasm) for r in (Q4_ROWS_AT_ONCE, 2, 1))

    @T.macro
    def f32_tiles(xf: Any, of: Any, q: Any, s: Any, rows: Any) -> None:
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
                    ) * load_f32(s, (col0 * NR + j, (word * PER_WORD + e) // GROUP_SIZE))
            task(xf, of, tile, 0, col0, rows)

    @T.macro
    def widened_tiles(xf: Any, of: Any, q: Any, s: Any, rows: Any) -> None:
        x32 = T.alloc_buffer((rows * k,), "float32")
        for i in range(rows * k):
            x32[i] = T.Cast("float32", xf[i])
        f32_tiles(x32, of, q, s, rows)

    tiles = f32_tiles if x_dtype == "float32" else widened_tiles

    @T.macro
    def few_rows(xf: Any, of: Any, q: Any, s: Any, rows: Any) -> None:
        xs = T.alloc_buffer((pack_rows, blocks, PER_WORD, LANES), "float32")
        xm = T.alloc_buffer((pack_rows, blocks, LANES), "float32")
        mk = T.alloc_buffer((PER_WORD, LANES), "uint32")
        prescale(xf, xs, xm, mk, rows)
        for row in T.parallel(n):
            for blk in range(rows // Q4_ROWS_AT_ONCE):
                row_dots(q, s, xs, xm, mk, of, row, blk * Q4_ROWS_AT_ONCE)
            done = rows // Q4_ROWS_AT_ONCE * Q4_ROWS_AT_ONCE
            if rows - done >= 2:
                row_pair(q, s, xs, xm, mk, of, row, done)
            if (rows - done) % 2 == 1:
                row_dot(q, s, xs, xm, mk, of, row, rows - 1)

    if k % (LANES * PER_WORD):
        dispatch = tiles  # the GEMV's kernel needs k in whole 64-weight blocks
    else:

        @T.macro
        def dispatch(xf: Any, of: Any, q: Any, s: Any, rows: Any) -> None:
            if rows < pack_rows:
                few_rows(xf, of, q, s, rows)
            else:
                tiles(xf, of, q, s, rows)

    @T.prim_func(private=True)
    def kernel(
        var_x: T.handle,
        q: T.Buffer((n, words_per_row), "uint32"),
        s: T.Buffer((n, groups), s_dtype),
        var_out: T.handle,
    ) -> None:
        T.func_attr({"tirx.noalias": True})
        d0 = T.int64()
        d1 = T.int64()
        x = T.match_buffer(var_x, (d0, d1, k), x_dtype)
        out = T.match_buffer(var_out, (d0, d1, n), out_dtype)
        xf = T.decl_buffer((d0 * d1 * k,), x_dtype, data=x.data)
        of = T.decl_buffer((d0 * d1 * n,), out_dtype, data=out.data)
        dispatch(xf, of, q, s, d0 * d1)

    return kernel
