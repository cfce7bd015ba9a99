"""TIR schedules for the CPU (llvm) target's matmul kernels: parallel, vectorized, and for 4-bit
weights dequantized in registers.

Unscheduled, every kernel is one single-threaded loop nest; LLVM vectorises the f32 dot products
by itself, but not the 4-bit ones, whose unpacking it leaves scalar. Here every linear layer (the
``NT_matmul`` blocks ``FuseTransposeMatmul`` makes of f32 ones, the ``q4_matmul`` blocks of
group_quant.py) gets one of two schedules:

- **GEMV** (one row of activations: decode), 4-bit weights only. When the reduction is a
  multiple of 64 (every SmolLM2 / Qwen / Llama layer), the kernel is replaced by a hand-written
  one (``cpu_kernels.q4_gemv``: masked codes against pre-scaled inputs, the ``- 7`` and the
  scale out of the inner loop; three vector operations per 8 weights instead of six; on wasm32,
  the same kernel with its operations in the order the browser's JIT runs best). Otherwise
  output rows are spread over the thread pool, ``TILE_N`` rows a task, each row reduced into
  its own vector accumulator (an rfactor'ed local buffer), a lane being code ``e`` of one
  broadcast word. f32 GEMVs stay as LLVM vectorises them: memory-bound, they gained nothing from
  a schedule.
- **GEMM** (many rows: prefill, batched decode). On targets with AVX2 + FMA, the hand-written
  register-blocked ``cpu_kernels.gemm_f32`` / ``gemm_q4`` (16 columns a task, a 6 x 16 block of
  outputs in registers); on wasm32 the same kernels with a 2 x 16 block (16 128-bit
  registers). Elsewhere (SSE2, where the 6 x 16 block spills; the small one is untried there),
  a tile of ``TILE_N`` output columns per task; for 4-bit weights the tile's weights are
  dequantized once into a small local buffer (L1-sized) and reused by every activation row,
  then each row's dot products run as in the GEMV.

Float16 models (q4f16_1: activations and scales; q0f16: weights too) get the same hand-written
kernels on native targets, which widen every load and sum in float32 (the generic kernels sum
in float16, converting at every step on CPUs without float16 arithmetic: 3-7x slower). The
decode GEMV of unquantized float16 weights (q0f16) takes the GEMM's one-row path on AVX2 + FMA.
On SSE2 the GEMMs keep the TIR schedule and its float16 sums; wasm32 keeps the generic kernels.

Results move by float rounding only (the sums are reassociated), within the tolerances the
numerics tests use. Kernels these schedules do not recognise are left as they are.
"""

from __future__ import annotations

from typing import Any

from tvm import s_tir, tirx

from mlcpatch.build import cpu_kernels
from mlcpatch.build.cpu_kernels import LANES, NR, TILE_N
from mlcpatch.build.quantization.group_quant import DEQUANT_BLOCK, inline_dequantize_func
from mlcpatch.build.quantization.q4_format import PER_WORD, quantized_shapes

MATMUL_BLOCKS = ("NT_matmul", "q4_matmul")  # FuseTransposeMatmul's and group_quant.py's


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


def _operands(
    sch: s_tir.Schedule, block: Any, dequant: Any | None, wasm: bool = False
) -> list[Any] | None:
    """The kernel's buffers as the hand-written kernels take them, (x, w, out) or (x, words,
    scales, out), when they are its parameters in that order; else None. Float16 operands
    only on native targets: wasm32 has no float16 conversion instructions, and no browser
    test runs a float16 CPU library, so its float16 models keep the generic kernels."""
    x = sch.get(block).reads[0].source
    out = sch.get(block).writes[0].source
    if dequant is None:
        weights = [sch.get(block).reads[1].source]
    else:
        weights = [r.source for r in sch.get(dequant).reads]
    operands = [x, *weights, out]
    params = sch.mod["main"].params
    if len(params) != len(operands):
        return None
    if not all(p.same_as(b) for p, b in zip(params, operands, strict=True)):
        return None
    # (x, w, out), or (x, words, scales, out) with uint32 words; the rest float32 or float16
    # (q0f16, q4f16_1)
    dtypes = [str(b.dtype) for b in operands]
    if dequant is not None and dtypes.pop(1) != "uint32":
        return None
    floats = {"float32"} if wasm else {"float32", "float16"}
    return operands if set(dtypes) <= floats else None


def _dtypes(operands: list[Any]) -> tuple[str, str, str]:
    """(input, weights or scales, output) dtypes of a kernel's operands."""
    return str(operands[0].dtype), str(operands[-2].dtype), str(operands[-1].dtype)


def _static(buffer: Any) -> list[int] | None:
    dims = [_const_int(d) for d in buffer.shape]
    return None if any(d is None for d in dims) else dims


def _q4_gemv(sch: s_tir.Schedule, block: Any, dequant: Any, wasm: bool) -> Any | None:
    """The hand-written 4-bit GEMV for this kernel, or None where it does not apply."""
    operands = _operands(sch, block, dequant, wasm)
    if operands is None:
        return None
    shapes = [_static(b) for b in operands]
    if any(shape is None for shape in shapes):
        return None
    x_shape, w_shape, s_shape, out_shape = shapes
    n, k = w_shape[0], x_shape[-1]
    if k % (LANES * PER_WORD) or out_shape[-1] != n:
        return None
    if (tuple(w_shape), tuple(s_shape)) != quantized_shapes((n, k)):
        return None
    return cpu_kernels.q4_gemv(n, k, tuple(x_shape), tuple(out_shape), wasm, _dtypes(operands))


def _gemm(sch: s_tir.Schedule, block: Any, dequant: Any | None, wasm: bool = False) -> Any | None:
    """The hand-written register-blocked GEMM for this kernel, or None where it does not
    apply (3-D input and output, static weights, ``n % 16 == 0``, ``k % 8 == 0``); ``wasm``:
    its wasm32 form (a smaller register block, the 4-bit GEMV's wasm order)."""
    operands = _operands(sch, block, dequant, wasm)
    if operands is None or len(operands[0].shape) != 3 or len(operands[-1].shape) != 3:
        return None
    k, n = _const_int(operands[0].shape[-1]), _const_int(operands[-1].shape[-1])
    if k is None or n is None or n % NR or k % LANES:
        return None
    weights = [_static(b) for b in operands[1:-1]]
    if dequant is None:
        return cpu_kernels.gemm_f32(n, k, wasm, _dtypes(operands)) if weights == [[n, k]] else None
    if weights != [list(shape) for shape in quantized_shapes((n, k))]:
        return None
    return cpu_kernels.gemm_q4(n, k, wasm, _dtypes(operands))


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


def _with_attrs_of(func: tirx.PrimFunc, kernel: tirx.PrimFunc) -> tirx.PrimFunc:
    """``kernel`` carrying ``func``'s attributes (the replaced kernel's, e.g. its op pattern)."""
    return kernel.with_attrs(dict(func.attrs)) if func.attrs else kernel


def schedule_matmul(
    func: tirx.PrimFunc, wide: bool = False, wasm: bool = False
) -> tirx.PrimFunc | None:
    """``func`` scheduled (or replaced by a hand-written kernel), or None when it is not a
    kernel these schedules know. ``wide``: the target has AVX2 + FMA (16 256-bit registers),
    which the register-blocked GEMM is sized for; elsewhere (SSE2) it spills, and the GEMM
    schedule below does as well. ``wasm``: the target is wasm32 (its own GEMV, and the GEMM
    with a smaller block)."""
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
            # Float16 (q0f16) sums in float16, converting at every step: there the GEMM's
            # one-row path (8 FMA chains over widened loads) on AVX2 + FMA (with F16C).
            operands = _operands(sch, block, None) if wide else None
            if operands is None or _dtypes(operands) == cpu_kernels.F32:
                return None
            kernel = _gemm(sch, block, None)
            return None if kernel is None else _with_attrs_of(func, kernel)
        kernel = _q4_gemv(sch, block, dequant, wasm)
        if kernel is not None:
            return _with_attrs_of(func, kernel)
        sch.compute_inline(dequant)
        _schedule_gemv(sch, block)
    else:
        kernel = _gemm(sch, block, dequant, wasm) if wide or wasm else None
        if kernel is not None:
            return _with_attrs_of(func, kernel)
        _schedule_gemm(sch, block, dequant)
    return sch.mod["main"]


def target_is_wide(target: Any) -> bool:
    """Whether an llvm ``target`` has AVX2 and FMA (what ``schedule_matmul``'s ``wide`` means)."""
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target.codegen import llvm_get_cpu_features

    features = {str(f) for f in llvm_get_cpu_features(target)}
    return {"avx2", "fma"} <= features


def target_is_wasm(target: Any) -> bool:
    """Whether ``target`` emits wasm32 code (the browser's CPU library)."""
    return target is not None and "wasm32" in str(target.attrs.get("mtriple", ""))


def schedule_cpu_kernels(mod: Any) -> Any:
    """Every matmul PrimFunc of ``mod`` (after legalization) scheduled for the CPU target in
    scope (``with target``); 4-bit kernels these schedules do not take get their
    dequantization inlined instead."""
    from tvm.target import Target

    target = Target.current(allow_none=True)
    wide, wasm = target_is_wide(target), target_is_wasm(target)
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            scheduled = schedule_matmul(func, wide, wasm) or inline_dequantize_func(func)
            if scheduled is not None:
                updates[gvar] = scheduled
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod
