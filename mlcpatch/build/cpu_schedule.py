"""TIR schedules for the CPU (llvm) target's matmul kernels: parallel, vectorized, and for 4-bit
weights dequantized in registers.

Unscheduled, every kernel is one single-threaded loop nest; LLVM vectorises the f32 dot products
by itself, but not the 4-bit ones, whose unpacking it leaves scalar. Here every linear layer (the
``NT_matmul`` blocks ``FuseTransposeMatmul`` makes of f32 ones, the ``q4_matmul`` blocks of
group_quant.py) gets one of two schedules:

- **GEMV** (one row of activations: decode), 4-bit weights only. When the reduction is a
  multiple of 64 (every SmolLM2 / Qwen / Llama layer), the kernel is replaced by a hand-written
  one (``_q4_gemv_kernel``: masked codes against pre-scaled inputs, the ``- 7`` and the scale
  taken out of the inner loop; three vector operations per 8 weights instead of six). Otherwise
  output rows are spread over the thread pool, ``TILE_N`` rows a task, each row reduced into
  its own vector accumulator (an rfactor'ed local buffer), a lane being code ``e`` of one
  broadcast word. f32 GEMVs stay as LLVM vectorises them: memory-bound, they gained nothing from
  a schedule.
- **GEMM** (many rows: prefill, batched decode): a tile of ``TILE_N`` output columns per task;
  for 4-bit weights the tile's weights are dequantized once into a small local buffer (L1-sized)
  and reused by every activation row, then each row's dot products run as in the GEMV.

Results move by float rounding only (the sums are reassociated), within the tolerances the
numerics tests use. Kernels these schedules do not recognise are left as they are.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

from mlcpatch.build.quantization.group_quant import DEQUANT_BLOCK, inline_dequantize_func
from mlcpatch.build.quantization.q4_format import PER_WORD

MATMUL_BLOCKS = ("NT_matmul", "q4_matmul")  # FuseTransposeMatmul's and group_quant.py's
LANES = 8  # f32 lanes of one AVX2 register (two SSE2 ones); equal to PER_WORD
TILE_N = 4  # output columns per GEMM task: their dequantized weights stay in L1


def _const_int(value: Any) -> int | None:
    return int(value) if isinstance(value, tirx.IntImm) else None


def _extent(sch: s_tir.Schedule, loop: Any) -> int | None:
    return _const_int(sch.get(loop).extent)


def _find_block(sch: s_tir.Schedule, name: str) -> Any | None:
    try:
        return sch.get_sblock(name)
    except s_tir.schedule.ScheduleError:
        return None


def _matmul_shape_ok(sch: s_tir.Schedule, block: Any) -> bool:
    """Spatial iters then one reduction iter, in that loop order, with a static reduction
    extent that splits into whole vectors."""
    iters = sch.get(block).iter_vars
    kinds = [iv.iter_type for iv in iters]
    if len(iters) < 2 or kinds[-1] != tirx.IterVar.CommReduce:
        return False
    if any(k != tirx.IterVar.DataPar for k in kinds[:-1]):
        return False
    loops = sch.get_loops(block)
    if len(loops) != len(iters):
        return False
    k = _extent(sch, loops[-1])
    return k is not None and k % LANES == 0 and _extent(sch, loops[-2]) is not None


def _tile(sch: s_tir.Schedule, n: Any) -> int:
    extent = _extent(sch, n)
    return TILE_N if extent is not None and extent % TILE_N == 0 else 1


def _rows_static_one(sch: s_tir.Schedule, loops: list[Any]) -> bool:
    return all(_extent(sch, loop) == 1 for loop in loops)


def _vector_reduce(sch: s_tir.Schedule, block: Any, k: Any) -> tuple[Any, Any, Any]:
    """Split ``k`` into (ko, ki = LANES) and rfactor ki: (rf block, write-back block, ko)."""
    ko, ki = sch.split(k, factors=[None, LANES])
    rf = sch.rfactor(ki, factor_axis=0)
    return rf, block, ko


def _schedule_gemv(sch: s_tir.Schedule, block: Any) -> None:
    *rows, n, k = sch.get_loops(block)
    n = sch.fuse(*rows, n) if rows else n
    tile = _tile(sch, n)
    no, ni = sch.split(n, factors=[None, tile])
    rf, wb, _ = _vector_reduce(sch, block, k)
    no, ni, ko, ki = sch.get_loops(rf)
    # no, ni, ko, ki -> no, ko, ni, ki: ``tile`` independent accumulators (one FMA chain
    # alone is latency-bound) that share each input vector.
    sch.reorder(ko, ni)
    sch.vectorize(ki)
    sch.unroll(ni)
    sch.reverse_compute_at(wb, no)
    sch.set_scope(rf, 0, "local")
    sch.parallel(no)  # before decompose_reduction: parallel needs the reduction whole
    sch.decompose_reduction(rf, ko)


def _q4_gemv_kernel(n: int, k: int, x_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Any:
    """A hand-written 4-bit GEMV (f32 input, f32 scales, ``k`` a multiple of 64) doing three
    vector operations per 8 weights: AND, int-to-float, FMA.

    - No shift: code ``e`` of a word is masked in place, ``q * 16**e``, and its input is stored
      pre-scaled by ``16**-e`` (exact: a power of two), so the product is ``q * x``. The top code
      (bits 28..31) is shifted down instead, as a masked value would not fit a signed int.
    - No per-weight ``- 7`` or scale: within a lane's 8 codes, ``sum (q - 7) x`` is
      ``sum q x - 7 sum x``; the second term is computed once per call for all rows, and the
      scale multiplies the lane's sum once (the lanes of 8 consecutive words span two groups).
    - Rows in tiles of 4 over the thread pool: four independent FMA chains share each input
      vector; the tile's accumulators stay on the stack (scope "global" under 1 KiB is an
      alloca on the CPU; "local" would be a workspace call per tile).
    """
    from tvm.script import tirx as T

    words_per_row, groups, blocks = k // PER_WORD, k // 32, k // (LANES * PER_WORD)
    tile = TILE_N if n % TILE_N == 0 else 1
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
        for row0 in T.parallel(n // tile):
            acc = T.alloc_buffer((tile, LANES), "float32")
            part = T.alloc_buffer((tile, LANES), "float32")
            for r in T.unroll(tile):
                for lane in T.vectorized(LANES):
                    acc[r, lane] = T.float32(0)
            for b in range(blocks):
                for r in T.unroll(tile):
                    for lane in T.vectorized(LANES):
                        part[r, lane] = xm[b, lane]
                    for e in T.unroll(PER_WORD):
                        # One expression on purpose: the word bound to a name inside the
                        # vectorized loop (a Let) came out wrong (relative error 0.5).
                        for lane in T.vectorized(LANES):
                            part[r, lane] = (
                                part[r, lane]
                                + T.Cast(
                                    "float32",
                                    T.reinterpret(
                                        "int32",
                                        T.if_then_else(
                                            e == top,
                                            T.shift_right(
                                                w[row0 * tile + r, b * 8 + lane], T.uint32(28)
                                            ),
                                            T.bitwise_and(
                                                w[row0 * tile + r, b * 8 + lane],
                                                T.shift_left(T.uint32(15), T.Cast("uint32", 4 * e)),
                                            ),
                                        ),
                                    ),
                                )
                                * xs[b, e, lane]
                            )
                    for lane in T.vectorized(LANES):
                        # lanes 0-3 are in group 2b, lanes 4-7 in group 2b + 1
                        acc[r, lane] = (
                            acc[r, lane] + s[row0 * tile + r, b * 2 + lane // 4] * part[r, lane]
                        )
            for r in T.unroll(tile):
                of[row0 * tile + r] = T.float32(0)
                for lane in range(LANES):
                    of[row0 * tile + r] = of[row0 * tile + r] + acc[r, lane]

    return kernel


def _q4_gemv(sch: s_tir.Schedule, block: Any, dequant: Any) -> Any | None:
    """The hand-written GEMV for this kernel's shapes, or None where it does not apply."""
    x = sch.get(block).reads[0].source
    out = sch.get(block).writes[0].source
    words, scales = (r.source for r in sch.get(dequant).reads)
    params = sch.mod["main"].params
    # The new kernel takes its arguments in the legalized op's order.
    expected = (x, words, scales, out)
    if len(params) != 4 or not all(p.same_as(b) for p, b in zip(params, expected, strict=True)):
        return None
    shapes = [[_const_int(d) for d in b.shape] for b in (x, out, words, scales)]
    if any(d is None for shape in shapes for d in shape):
        return None
    x_shape, out_shape, w_shape, s_shape = shapes
    n, k = w_shape[0], x_shape[-1]
    if k % (LANES * PER_WORD) or [str(b.dtype) for b in (x, out, words, scales)] != [
        "float32",
        "float32",
        "uint32",
        "float32",
    ]:
        return None
    if w_shape != [n, k // PER_WORD] or s_shape != [n, k // 32] or out_shape[-1] != n:
        return None
    return _q4_gemv_kernel(n, k, tuple(x_shape), tuple(out_shape))


def _schedule_gemm(sch: s_tir.Schedule, block: Any, dequant: Any | None) -> None:
    *rows, n, k = sch.get_loops(block)
    m = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    tile = _tile(sch, n)
    no, ni = sch.split(n, factors=[None, tile])
    sch.reorder(no, m, ni)
    rf, wb, _ = _vector_reduce(sch, block, k)
    no, m, ni, ko, ki = sch.get_loops(rf)
    # no, m, ni, ko, ki -> no, m, ko, ni, ki: one input vector feeds ``tile`` columns.
    sch.reorder(ko, ni)
    sch.vectorize(ki)
    sch.unroll(ni)
    sch.reverse_compute_at(wb, m)
    sch.set_scope(rf, 0, "local")
    if dequant is not None:
        # The tile's weights, dequantized once per task and reused by every input row.
        sch.compute_at(dequant, no)
        *_, dk = sch.get_loops(dequant)
        _, dki = sch.split(dk, factors=[None, LANES])
        sch.vectorize(dki)
        sch.set_scope(dequant, 0, "local")
    sch.parallel(no)
    sch.decompose_reduction(rf, ko)


def schedule_matmul(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` scheduled, or None when it is not a kernel these schedules know."""
    sch = s_tir.Schedule(func)
    blocks = [b for b in (_find_block(sch, name) for name in MATMUL_BLOCKS) if b is not None]
    if len(blocks) != 1:
        return None
    block = blocks[0]
    dequant = _find_block(sch, DEQUANT_BLOCK)
    children = sch.get_child_blocks(sch.get_sblock("root"))
    if len(children) != (2 if dequant is not None else 1):
        return None
    if not _matmul_shape_ok(sch, block):
        return None
    *rows, _n, _k = sch.get_loops(block)
    if not rows or _rows_static_one(sch, rows):
        if dequant is None:
            # f32 GEMV is memory-bound and LLVM already vectorises it well: scheduled, it was
            # no faster on one thread (SSE2: slower) and slower on a loaded machine's two.
            return None
        kernel = _q4_gemv(sch, block, dequant)
        if kernel is not None:
            return kernel.with_attrs(dict(func.attrs)) if func.attrs else kernel
        sch.compute_inline(dequant)
        _schedule_gemv(sch, block)
    else:
        _schedule_gemm(sch, block, dequant)
    return sch.mod["main"]


def schedule_cpu_kernels(mod: Any) -> Any:
    """Every matmul PrimFunc of ``mod`` (after legalization) scheduled for the CPU; 4-bit
    kernels these schedules do not take get their dequantization inlined instead."""
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            scheduled = schedule_matmul(func) or inline_dequantize_func(func)
            if scheduled is not None:
                updates[gvar] = scheduled
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
