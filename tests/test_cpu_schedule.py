"""The CPU (llvm) matmul schedules of mlcpatch/build/cpu_schedule.py: each kernel shape the models
produce (decode GEMV, prefill GEMM with a dynamic row count, 4-bit and f32 weights, reduction
lengths that take each code path) is compiled scheduled and checked against numpy.

Whole-model numerics of the scheduled builds: tests/test_quant_q4.py and
tests/test_build_parity.py (every arch's tiny model, against transformers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.heavy

tvm = pytest.importorskip("tvm")

from tvm import te, tirx  # noqa: E402

from mlcpatch.build import cpu_schedule  # noqa: E402
from mlcpatch.build.cpu_kernels import (  # noqa: E402
    MR,
    PACK_ROWS,
    Q4_PACK_ROWS,
    WASM_MR,
    WASM_Q4_PACK_ROWS,
)
from mlcpatch.build.quantization import group_quant, q4_format  # noqa: E402
from mlcpatch.build.targets import parse_targets  # noqa: E402

# Sums of up to 1536 products of N(0,1) values, reassociated: float32 rounding, relative to
# the largest output, stays near 1e-6 (measured <= 6e-7 on SmolLM2's shapes).
REL_TOL = 1e-5


def decode_words(words: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """W' [n, k] from the packed format (written here from the format's description)."""
    codes = np.zeros((words.shape[0], words.shape[1] * 8), dtype=np.int64)
    for e in range(8):
        codes[:, e::8] = (words.astype(np.int64) >> (4 * e)) & 0xF
    scale = np.repeat(scales.astype(np.float64), 32, axis=1)
    return ((codes - 7) * scale)[:, :k]


def _rows(kind: str) -> tuple[Any, ...]:
    if kind == "decode":
        return (1, 1)
    if kind in ("prefill", "packed"):  # "packed": enough rows for the GEMM to pack them
        return (1, tirx.Var("seq_len", "int64"))
    return (tirx.Var("batch_size", "int64"), 1)  # batched decode


def _q4_func(
    kind: str, n: int, k: int, dtype: str = "float32", out_dtype: str = "float32"
) -> tirx.PrimFunc:
    """A 4-bit linear layer as group_quant.py makes it: ``dtype`` activations and scales
    (q4f16_1: float16)."""
    x = te.placeholder((*_rows(kind), k), dtype, name="x")
    q_shape, s_shape = q4_format.quantized_shapes((n, k))
    words = te.placeholder(q_shape, "uint32", name="q_weight")
    scales = te.placeholder(s_shape, dtype, name="q_scale")
    out = group_quant._linear_te(x, words, scales, k=k, out_dtype=out_dtype)
    return te.create_prim_func([x, words, scales, out])


def _matmul_func(
    kind: str, n: int, k: int, dtype: str = "float32", out_dtype: str = "float32"
) -> tirx.PrimFunc:
    """An unquantized linear layer as FuseTransposeMatmul makes it: ``dtype`` activations and
    weights (q0f16: float16), products and sum in ``out_dtype``."""
    x = te.placeholder((*_rows(kind), k), dtype, name="x")
    w = te.placeholder((n, k), dtype, name="w")
    red = te.reduce_axis((0, k), name="k")

    def wide(value: Any) -> Any:
        return value if dtype == out_dtype else value.astype(out_dtype)

    out = te.compute(
        (*x.shape[:-1], n),
        lambda *i: te.sum(wide(x[(*i[:-1], red)]) * wide(w[i[-1], red]), axis=red),
        name="NT_matmul",
    )
    return te.create_prim_func([x, w, out])


# The library's CPU changes the code LLVM emits for the same schedule (SSE2 vs AVX2 + FMA).
CPUS = ["portable", "native"]


def _run(func: tirx.PrimFunc, args: list[np.ndarray], cpu: str = "portable") -> np.ndarray:
    (llvm,) = parse_targets("llvm", cpu)  # the target a build for that CPU compiles with
    target = llvm.make_target()
    lib = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target)
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    lib["main"](*tensors)
    return tensors[-1].numpy()


def _x(kind: str, k: int, rng: np.random.Generator) -> np.ndarray:
    shape = {"decode": (1, 1, k), "prefill": (1, 7, k), "batch": (3, 1, k)}[kind]
    return rng.standard_normal(shape).astype(np.float32)


def _check(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < REL_TOL, f"relative error {err:.2e}"


def _scheduled(func: tirx.PrimFunc, wasm: bool = False) -> tirx.PrimFunc:
    new = cpu_schedule.schedule_matmul(func, wasm=wasm)
    assert new is not None, "the schedule did not take this kernel"
    text = new.script()
    assert "T.parallel" in text and "T.vectorized" in text, text
    return new


# (n, k): k = 64 j takes the hand-written 4-bit GEMV; k = 8 j the per-word one; n % 4 != 0 the
# untiled columns.
SHAPES = [(96, 128), (40, 48), (30, 64), (12, 1536)]


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("kind", ["decode", "prefill", "batch"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_q4_kernels_match_numpy(kind: str, shape: tuple[int, int], cpu: str) -> None:
    n, k = shape
    rng = np.random.default_rng(n * k)
    words, scales = q4_format.quantize(rng.standard_normal((n, k)).astype(np.float32), "float32")
    x = _x(kind, k, rng)
    out = np.zeros((*x.shape[:-1], n), dtype=np.float32)
    got = _run(_scheduled(_q4_func(kind, n, k)), [x, words, scales, out], cpu)
    _check(got, x.astype(np.float64) @ decode_words(words, scales, k).T)


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("code", [0, 7, 8, 14, 15])
def test_q4_gemv_every_code_in_every_position(code: int, cpu: str) -> None:
    # The hand-written GEMV masks codes in place and shifts only the top one: a code >= 8 in
    # bits 28..31 is where a signed conversion would go wrong. One word pattern, all positions.
    n, k = 8, 128
    words = np.full((n, k // 8), sum(code << (4 * e) for e in range(8)), dtype=np.uint32)
    words[1::2] = 0x76543210  # every code 0..7 once
    scales = np.linspace(0.5, 2.0, n * (k // 32), dtype=np.float32).reshape(n, k // 32)
    x = np.random.default_rng(code).standard_normal((1, 1, k)).astype(np.float32)
    out = np.zeros((1, 1, n), dtype=np.float32)
    got = _run(_scheduled(_q4_func("decode", n, k)), [x, words, scales, out], cpu)
    _check(got, x.astype(np.float64) @ decode_words(words, scales, k).T)


# q4f16_1: float16 activations and scales, float16 outputs (float32 where a model keeps its
# logits in float32). The hand-written kernels widen every load to float32 and round only the
# result: with a float32 output the error is float32's (summing in float16, as the generic
# kernel does, is off by ~1e-3); with a float16 one, one rounding (2**-11 relative).
F16_CASES = [
    ("portable", "decode"),  # the GEMV is hand-written on every CPU; SSE2's GEMM is not
    ("native", "decode"),
    ("native", "batch"),  # the few-row path (the GEMV's kernel, rows sharing each word)
    ("native", "prefill"),  # 7 rows: the same
    ("native", "packed"),  # 40 rows: the input widened into a float32 copy, then packed
]
F16_ROWS = {"decode": (1, 1), "batch": (3, 1), "prefill": (1, 7), "packed": (1, 40)}


@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("cpu,kind", F16_CASES, ids=[f"{c}-{k}" for c, k in F16_CASES])
def test_q4_kernels_take_float16(cpu: str, kind: str, out_dtype: str) -> None:
    n, k = 96, 128
    rng = np.random.default_rng(k + len(kind))
    words, scales = q4_format.quantize(rng.standard_normal((n, k)).astype(np.float32), "float16")
    assert scales.dtype == np.float16
    x = rng.standard_normal((*F16_ROWS[kind], k)).astype(np.float16)
    func = _q4_func(kind, n, k, "float16", out_dtype)
    (llvm,) = parse_targets("llvm", cpu)
    wide = cpu_schedule.target_is_wide(llvm.make_target())
    new = cpu_schedule.schedule_matmul(func, wide=wide)
    assert new is not None
    text = new.script()
    assert "T.parallel" in text and "T.vectorized" in text, text
    assert '"float16"' in text and '"float32"' in text  # widened loads, float32 arithmetic
    out = np.zeros((*x.shape[:-1], n), dtype=out_dtype)
    got = _run(new, [x, words, scales, out], cpu)
    assert got.dtype == np.dtype(out_dtype)
    want = x.astype(np.float64) @ decode_words(words, scales.astype(np.float64), k).T
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert err < (REL_TOL if out_dtype == "float32" else 1e-3), f"relative error {err:.2e}"


# q0f16: float16 weights and activations. Summed in float16 by the generic kernels (a
# conversion at every step); on AVX2 + FMA the GEMM's kernels widen the loads instead, its
# one-row path also taking decode (8 FMA chains, one weight column at a time).
@pytest.mark.parametrize("out_dtype", ["float16", "float32"])
@pytest.mark.parametrize("kind", ["decode", "batch", "prefill", "packed"])
def test_float16_weights_take_the_gemm(kind: str, out_dtype: str) -> None:
    n, k = 48, 136  # three 16-column tasks; k a multiple of 8, not of a whole unrolled turn
    rng = np.random.default_rng(len(kind))
    x = rng.standard_normal((*F16_ROWS[kind], k)).astype(np.float16)
    w = rng.standard_normal((n, k)).astype(np.float16)
    func = _matmul_func(kind, n, k, "float16", out_dtype)
    (llvm,) = parse_targets("llvm", "native")
    assert cpu_schedule.target_is_wide(llvm.make_target())
    new = cpu_schedule.schedule_matmul(func, wide=True)
    assert new is not None and "panel" in new.script()  # the hand-written GEMM
    got = _run(new, [x, w, np.zeros((*x.shape[:-1], n), dtype=out_dtype)], "native")
    want = x.astype(np.float64) @ w.astype(np.float64).T
    err = np.abs(got.astype(np.float64) - want).max() / np.abs(want).max()
    assert err < (REL_TOL if out_dtype == "float32" else 1e-3), f"relative error {err:.2e}"
    # float32 matmuls keep LLVM's own GEMV, as before
    if kind == "decode":
        assert cpu_schedule.schedule_matmul(_matmul_func("decode", n, k), wide=True) is None


# The wasm32 GEMV (cpu_kernels.q4_gemv with wasm=True) is plain TIR: compiled for this CPU here, its
# arithmetic is checked the same way; its wasm32 build runs in Chromium in test_browser_wasm.py
# (tiny-qwen2-q4 against the native build).
@pytest.mark.parametrize("code", [None, 0, 7, 8, 15])
@pytest.mark.parametrize("shape", [(96, 128), (30, 64), (12, 1536)], ids=str)
def test_q4_gemv_for_wasm_matches_numpy(shape: tuple[int, int], code: int | None) -> None:
    n, k = shape
    rng = np.random.default_rng(n * k)
    if code is None:
        words, scales = q4_format.quantize(
            rng.standard_normal((n, k)).astype(np.float32), "float32"
        )
    else:  # one code in every position, and every code 0..7 once (see the test above)
        words = np.full((n, k // 8), sum(code << (4 * e) for e in range(8)), dtype=np.uint32)
        words[1::2] = 0x76543210
        scales = np.linspace(0.5, 2.0, n * (k // 32), dtype=np.float32).reshape(n, k // 32)
    x = _x("decode", k, rng)
    func = _scheduled(_q4_func("decode", n, k), wasm=True)
    assert "& mk[" in func.script()  # masks loaded from the buffer: the wasm order
    assert "& mk[" not in _scheduled(_q4_func("decode", n, k)).script()
    got = _run(func, [x, words, scales, np.zeros((1, 1, n), dtype=np.float32)], "native")
    _check(got, x.astype(np.float64) @ decode_words(words, scales, k).T)


def test_wasm_targets_are_recognised() -> None:
    from mlcpatch.build.wasm.target import make_target as wasm_target
    from mlcpatch.build.webgpu.target import make_target as webgpu_target

    assert cpu_schedule.target_is_wasm(wasm_target())
    assert not cpu_schedule.target_is_wasm(tvm.target.Target({"kind": "llvm"}))
    assert not cpu_schedule.target_is_wasm(webgpu_target())  # its kernels are not CPU ones
    assert not cpu_schedule.target_is_wasm(None)


@pytest.mark.parametrize("kind", ["prefill", "batch"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
def test_f32_kernels_match_numpy(kind: str, shape: tuple[int, int]) -> None:
    n, k = shape
    rng = np.random.default_rng(n + k)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = _x(kind, k, rng)
    out = np.zeros((*x.shape[:-1], n), dtype=np.float32)
    got = _run(_scheduled(_matmul_func(kind, n, k)), [x, w, out])
    _check(got, x.astype(np.float64) @ w.T.astype(np.float64))


def test_q4_kernel_outside_the_schedules_still_inlines_its_dequantization() -> None:
    # k = 20 does not split into 8-lane vectors: no schedule, the old inlined kernel instead.
    n, k = 16, 20
    func = _q4_func("decode", n, k)
    assert cpu_schedule.schedule_matmul(func) is None
    mod = cpu_schedule.schedule_cpu_kernels(tvm.IRModule({"main": func}))
    assert group_quant.DEQUANT_BLOCK not in mod["main"].script()
    rng = np.random.default_rng(3)
    words, scales = q4_format.quantize(rng.standard_normal((n, k)).astype(np.float32), "float32")
    x = _x("decode", k, rng)
    got = _run(mod["main"], [x, words, scales, np.zeros((1, 1, n), dtype=np.float32)])
    _check(got, x.astype(np.float64) @ decode_words(words, scales, k).T)


def test_f32_decode_is_left_to_llvm() -> None:
    assert cpu_schedule.schedule_matmul(_matmul_func("decode", 96, 128)) is None


def test_other_kernels_are_left_alone() -> None:
    a = te.placeholder((4, 64), "float32", name="a")
    red = te.reduce_axis((0, 64), name="k")
    total = te.compute((4,), lambda i: te.sum(a[i, red], axis=red), name="row_sum")
    assert cpu_schedule.schedule_matmul(te.create_prim_func([a, total])) is None


# The register-blocked GEMM (cpu_kernels.gemm_*), taken on targets with AVX2 + FMA: below
# PACK_ROWS (f32, 40) or Q4_PACK_ROWS (4-bit, 32) rows each output is a dot product (f32: up to
# COLUMN_ROWS rows a column at a time, more four columns at a time, in both pairs of rows and a
# last odd one; 4-bit: blocks of four rows, then a pair and an odd one); from there on, packed
# panels and a 6-row micro-kernel whose last block is a tail of 1-5 rows. Compiled for SSE2
# too, where LLVM splits its vectors.
WIDE_SHAPES = [(32, 40), (16, 1536), (64, 128)]
WIDE_ROWS = [
    ("prefill", 3),
    ("prefill", 40),
    ("prefill", 117),
    ("batch", 2),
    ("batch", 5),
    ("batch", 11),
    ("batch", 8),
    ("batch", 43),
]


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("quant", ["f32", "q4"])
@pytest.mark.parametrize("rows", WIDE_ROWS, ids=[f"{k}{m}" for k, m in WIDE_ROWS])
@pytest.mark.parametrize("shape", WIDE_SHAPES, ids=[f"{n}x{k}" for n, k in WIDE_SHAPES])
def test_wide_gemm_matches_numpy(
    shape: tuple[int, int], rows: tuple[str, int], quant: str, cpu: str
) -> None:
    _check_gemm(shape, rows, quant, cpu, wasm=False)


# On wasm32 the same GEMM with a 2-row register block (cpu_kernels.WASM_MR): plain TIR, checked
# here on this CPU; its wasm32 build runs in Chromium in test_browser_wasm.py.
@pytest.mark.parametrize("quant", ["f32", "q4"])
@pytest.mark.parametrize("rows", WIDE_ROWS, ids=[f"{k}{m}" for k, m in WIDE_ROWS])
@pytest.mark.parametrize("shape", WIDE_SHAPES, ids=[f"{n}x{k}" for n, k in WIDE_SHAPES])
def test_wasm_gemm_matches_numpy(shape: tuple[int, int], rows: tuple[str, int], quant: str) -> None:
    _check_gemm(shape, rows, quant, "native", wasm=True)


def _check_gemm(
    shape: tuple[int, int], rows: tuple[str, int], quant: str, cpu: str, wasm: bool
) -> None:
    n, k = shape
    kind, m = rows
    rng = np.random.default_rng(n * k + m)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((1, m, k) if kind == "prefill" else (m, 1, k)).astype(np.float32)
    out = np.zeros((*x.shape[:-1], n), dtype=np.float32)
    func = _q4_func(kind, n, k) if quant == "q4" else _matmul_func(kind, n, k)
    new = cpu_schedule.schedule_matmul(func, wide=not wasm, wasm=wasm)
    assert new is not None and "T.sblock" not in new.script(), "not the hand-written GEMM"
    q4_pack = WASM_Q4_PACK_ROWS if wasm else Q4_PACK_ROWS
    if m >= (q4_pack if quant == "q4" else PACK_ROWS):  # the register block's height
        block = WASM_MR if wasm else MR
        assert f"acc = T.alloc_buffer(({block}, 16)" in new.script()
    if quant == "q4":
        words, scales = q4_format.quantize(w, "float32")
        got = _run(new, [x, words, scales, out], cpu)
        want = x.astype(np.float64) @ decode_words(words, scales, k).T
    else:
        got = _run(new, [x, w, out], cpu)
        want = x.astype(np.float64) @ w.T.astype(np.float64)
    _check(got, want)


def test_wide_gemm_rows_cover_both_paths() -> None:
    from mlcpatch.build.cpu_kernels import COLUMN_ROWS, Q4_ROWS_AT_ONCE

    counts = [m for _, m in WIDE_ROWS]
    assert any(m <= COLUMN_ROWS and m % 2 for m in counts)  # f32 column pairs and one row
    assert any(COLUMN_ROWS < m < PACK_ROWS and m % 2 for m in counts)  # f32 row pairs and one
    assert any(m >= PACK_ROWS and m % MR for m in counts)  # f32 packed, with a tail
    assert {m % Q4_ROWS_AT_ONCE for m in counts if m < Q4_PACK_ROWS} >= {0, 1, 2, 3}
    assert any(m >= Q4_PACK_ROWS and m % MR for m in counts)  # 4-bit packed, with a tail
    assert {m % Q4_ROWS_AT_ONCE for m in counts if m < WASM_Q4_PACK_ROWS} >= {0, 1, 2, 3}
    assert any(m >= WASM_Q4_PACK_ROWS and m % WASM_MR for m in counts)  # wasm: its block, a tail


def test_wide_gemm_only_where_it_fits() -> None:
    # n = 40 is not a whole number of 16-column tasks: the generic GEMM schedule instead.
    untiled = cpu_schedule.schedule_matmul(_matmul_func("prefill", 40, 48), True)
    assert "T.sblock" in untiled.script()
    assert "T.sblock" in cpu_schedule.schedule_matmul(_matmul_func("prefill", 32, 48)).script()


def test_wide_means_avx2_and_fma() -> None:
    def target(**options: str) -> Any:
        return tvm.target.Target({"kind": "llvm", **options})

    assert cpu_schedule.target_is_wide(target(mcpu="x86-64-v3"))
    assert cpu_schedule.target_is_wide(target(mcpu="znver3"))
    assert not cpu_schedule.target_is_wide(target())  # x86-64 baseline: SSE2
    assert not cpu_schedule.target_is_wide(target(mcpu="x86-64-v2"))
    assert not cpu_schedule.target_is_wide(target(mtriple="wasm32-unknown-unknown-wasm"))
    assert not cpu_schedule.target_is_wide(None)
