"""TIR schedules for the CPU (llvm) target's matmul kernels: parallel, vectorized, and for 4-bit
weights dequantized in registers.

Unscheduled, every kernel is one single-threaded loop nest; LLVM vectorises the f32 dot products
by itself, but not the 4-bit ones, whose unpacking it leaves scalar. Here every linear layer (the
``NT_matmul`` blocks ``FuseTransposeMatmul`` makes of f32 ones, the ``q4_matmul`` blocks of
group_quant.py) gets one of two schedules:

- **GEMV** (one row of activations: decode), 4-bit weights only: output rows spread over the
  thread pool, ``TILE_N`` rows a task, each row reduced into its own vector accumulator (an
  rfactor'ed local buffer; several independent FMA chains), then summed. The lanes are 8
  consecutive packed words of a row; an unrolled loop takes code ``e`` of each with one constant
  shift (SSE2 has no per-lane shifts), against the input reordered once per call to match. When
  the reduction is not a multiple of 64, a lane is code ``e`` of one broadcast word instead.
  f32 GEMVs stay as LLVM vectorises them: memory-bound, they gained nothing from a schedule.
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


def _schedule_gemv_q4(sch: s_tir.Schedule, block: Any) -> None:
    """4-bit GEMV with uniform shifts: lanes are 8 consecutive packed words of a row, and the
    inner unrolled loop takes code ``e`` of each. The input is first copied into the matching
    order (``x[64 wo + 8 wi + e]`` stored at ``[wo, e, wi]``), so every load is contiguous and
    every shift is by one constant: plain SSE2 does it as well as AVX2."""
    span = LANES * PER_WORD
    xc = sch.cache_read(block, 0, "global")
    sch.transform_layout(
        xc,
        ("write", 0),
        lambda *idx: (*idx[:-1], idx[-1] // span, idx[-1] % PER_WORD, idx[-1] % span // PER_WORD),
    )
    *rows, n, k = sch.get_loops(block)
    n = sch.fuse(*rows, n) if rows else n
    tile = _tile(sch, n)
    no, ni = sch.split(n, factors=[None, tile])
    wo, wi, e = sch.split(k, factors=[None, LANES, PER_WORD])
    rf = sch.rfactor(wi, factor_axis=0)
    no, ni, wo, wi, e = sch.get_loops(rf)
    sch.reorder(wo, e, ni, wi)
    sch.vectorize(wi)
    sch.unroll(ni)
    sch.unroll(e)
    sch.reverse_compute_at(block, no)
    sch.set_scope(rf, 0, "local")
    sch.parallel(no)
    sch.decompose_reduction(rf, wo)


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
        sch.compute_inline(dequant)
        if _extent(sch, _k) % (LANES * PER_WORD) == 0:
            _schedule_gemv_q4(sch, block)
        else:
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
