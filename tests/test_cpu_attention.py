"""The hand-written KV-cache kernels of mlcpatch/build/cpu_attention.py, compiled for the CPU
(SSE2 and this host), against attention and RoPE written here in numpy, and against TVM's own
CPU kernels (which the builds used before) where RoPE is applied inside attention.

Whole-model numerics with these kernels installed: test_build_parity.py (every arch's tiny
model against transformers), test_runtime.py, test_loop_reuse.py (continued prefill).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.heavy

tvm = pytest.importorskip("tvm")

from tvm.relax.frontend.nn.llm._decode_kernels import _attention_decode_cpu  # noqa: E402
from tvm.relax.frontend.nn.llm._prefill_kernels import (  # noqa: E402
    _attention_prefill_cpu,
    _attention_prefill_ragged_cpu,
)
from tvm.relax.frontend.nn.llm.position_embedding import (  # noqa: E402
    llama_rope_with_position_map,
)

from mlcpatch.build import cpu_attention  # noqa: E402
from mlcpatch.build.targets import parse_targets  # noqa: E402

PAGE = 16
CPUS = ["portable", "native"]
# (query heads, KV heads, head dim): SmolLM2's, a tiny model's, a group of 4 at head dim 32.
HEADS = [(9, 3, 64), (4, 4, 16), (8, 2, 32)]
TOL = 2e-6  # outputs are averages of N(0,1) values: float32 rounding of sums of ~100 terms


def _build(func: Any, cpu: str) -> Any:
    (llvm,) = parse_targets("llvm", cpu)
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return tvm.compile(mod, llvm.make_target())["main"]


def _t(a: np.ndarray) -> Any:
    return tvm.runtime.tensor(a, tvm.cpu())


def attention_ref(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """q [n, hq, d] against k, v [L, hk, d] (the last n of L positions are the queries' own):
    output [n, hq, d] and log2-sum-exp2 of the scaled scores [n, hq], in float64."""
    n, hq, dim = q.shape
    length, hk = k.shape[:2]
    out = np.zeros((n, hq, dim))
    lse = np.zeros((n, hq))
    for i in range(n):
        seen = length - n + i + 1 if causal else length
        for h in range(hq):
            kv = h // (hq // hk)
            s = (k[:seen, kv].astype(np.float64) @ q[i, h]) / np.sqrt(dim) * np.log2(np.e)
            p = np.exp2(s - s.max())
            out[i, h] = p @ v[:seen, kv] / p.sum()
            lse[i, h] = s.max() + np.log2(p.sum())
    return out, lse


def rope_ref(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotate-half RoPE of x [n, heads, d] at the given positions (the default scaling)."""
    dim = x.shape[-1]
    half = dim // 2
    freq = 1.0 / theta ** (np.arange(half) * 2 / dim)
    angle = positions[:, None].astype(np.float64) * np.concatenate([freq, freq])[None, :]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    partner = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + partner * sin


class PagedCache:
    """Keys and values of several sequences scattered over shuffled pages, as the cache's
    kernels receive them."""

    def __init__(self, lengths: list[int], hk: int, dim: int, rng: np.random.Generator) -> None:
        counts = [-(-n // PAGE) for n in lengths]
        total = sum(counts)
        self.pages = rng.standard_normal((total + 3, 2, hk, PAGE, dim)).astype(np.float32)
        order = rng.permutation(total + 3)[:total].astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        self.values = order
        self.last_len = np.array(
            [n - (c - 1) * PAGE for n, c in zip(lengths, counts, strict=True)], np.int32
        )
        self.lengths = lengths

    def kv(self, seq: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys, values [L, hk, d] of sequence ``seq`` in position order."""
        rows = self.pages[self.values[self.indptr[seq] : self.indptr[seq + 1]]]
        k = rows[:, 0].transpose(0, 2, 1, 3).reshape(-1, *rows.shape[2:3], rows.shape[-1])
        v = rows[:, 1].transpose(0, 2, 1, 3).reshape(-1, *rows.shape[2:3], rows.shape[-1])
        n = self.lengths[seq]
        return k[:n], v[:n]


def _decode_args(cache: PagedCache, q: np.ndarray, rotary: int) -> list[Any]:
    b, hq, dim = q.shape
    k_rope = np.zeros(b, np.int32)
    q_rope = np.array(cache.lengths, np.int32) - 1
    return [
        _t(q), _t(cache.pages), _t(cache.indptr), _t(cache.values), _t(cache.last_len),
        _t(k_rope), _t(q_rope), _t(np.zeros((b, hq, dim), q.dtype)),
        _t(np.zeros((b, hq), np.float32)), rotary, 1.0, 10000.0, 1 / np.sqrt(dim),
    ]  # fmt: skip


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("heads", HEADS)
def test_decode_matches_numpy(cpu: str, heads: tuple[int, int, int]) -> None:
    hq, hk, dim = heads
    rng = np.random.default_rng(hq * 100 + dim)
    lengths = [1, 16, 17, 70]  # one row, one full page, a page and a row, several pages
    cache = PagedCache(lengths, hk, dim, rng)
    q = rng.standard_normal((len(lengths), hq, dim)).astype(np.float32)
    args = _decode_args(cache, q, rotary=0)
    _build(cpu_attention.paged_decode_attention(hk, hq, dim, {}), cpu)(*args)
    for seq in range(len(lengths)):
        k, v = cache.kv(seq)
        want, want_lse = attention_ref(q[seq : seq + 1], k, v, causal=False)
        np.testing.assert_allclose(args[7].numpy()[seq], want[0], atol=TOL)
        np.testing.assert_allclose(args[8].numpy()[seq], want_lse[0], atol=5 * TOL)


@pytest.mark.parametrize("heads", HEADS[:2])
def test_decode_with_inline_rope_matches_tvm(heads: tuple[int, int, int]) -> None:
    """RoPE applied inside attention (TVM's inline mode) agrees with TVM's kernel."""
    hq, hk, dim = heads
    rng = np.random.default_rng(7)
    cache = PagedCache([5, 33], hk, dim, rng)
    q = rng.standard_normal((2, hq, dim)).astype(np.float32)
    ours, theirs = _decode_args(cache, q, rotary=1), _decode_args(cache, q, rotary=1)
    _build(cpu_attention.paged_decode_attention(hk, hq, dim, {}), "native")(*ours)
    _build(_attention_decode_cpu(hk, hq, dim, "float32", False, {}), "portable")(*theirs)
    np.testing.assert_allclose(ours[7].numpy(), theirs[7].numpy(), atol=TOL)
    np.testing.assert_allclose(ours[8].numpy(), theirs[8].numpy(), atol=5 * TOL)
    plain = _decode_args(cache, q, rotary=0)
    _build(cpu_attention.paged_decode_attention(hk, hq, dim, {}), "native")(*plain)
    assert np.abs(plain[7].numpy() - ours[7].numpy()).max() > 1e-2  # the mode changed it


def _paged_prefill_args(
    cache: PagedCache, q: np.ndarray, q_lens: list[int], causal: int, rotary: int
) -> list[Any]:
    total, hq, dim = q.shape
    q_indptr = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    q_rope = np.concatenate(
        [np.arange(n - m, n) for n, m in zip(cache.lengths, q_lens, strict=True)]
    ).astype(np.int32)
    return [
        _t(q), _t(q_indptr), _t(cache.pages), _t(cache.indptr), _t(cache.values),
        _t(cache.last_len), _t(np.zeros(len(q_lens), np.int32)), _t(q_rope),
        _t(np.zeros((total, hq, dim), q.dtype)), _t(np.zeros((total, hq), np.float32)),
        causal, rotary, 1.0, 10000.0, 1 / np.sqrt(dim),
    ]  # fmt: skip


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("heads", HEADS)
def test_paged_prefill_matches_numpy(cpu: str, causal: int, heads: tuple[int, int, int]) -> None:
    hq, hk, dim = heads
    rng = np.random.default_rng(causal * 10 + dim)
    lengths, q_lens = [9, 40, 21], [3, 17, 1]
    cache = PagedCache(lengths, hk, dim, rng)
    q = rng.standard_normal((sum(q_lens), hq, dim)).astype(np.float32)
    args = _paged_prefill_args(cache, q, q_lens, causal, rotary=0)
    _build(cpu_attention.paged_prefill_attention(hk, hq, dim, {}), cpu)(*args)
    start = 0
    for seq, n in enumerate(q_lens):
        k, v = cache.kv(seq)
        want, want_lse = attention_ref(q[start : start + n], k, v, causal=bool(causal))
        np.testing.assert_allclose(args[8].numpy()[start : start + n], want, atol=TOL)
        np.testing.assert_allclose(args[9].numpy()[start : start + n], want_lse, atol=5 * TOL)
        start += n


def test_paged_prefill_with_inline_rope_matches_tvm() -> None:
    hq, hk, dim = HEADS[0]
    rng = np.random.default_rng(3)
    cache = PagedCache([20, 35], hk, dim, rng)
    q = rng.standard_normal((6, hq, dim)).astype(np.float32)
    ours = _paged_prefill_args(cache, q, [2, 4], causal=1, rotary=1)
    theirs = _paged_prefill_args(cache, q, [2, 4], causal=1, rotary=1)
    _build(cpu_attention.paged_prefill_attention(hk, hq, dim, {}), "native")(*ours)
    _build(_attention_prefill_cpu(hk, hq, dim, "float32", False, {}), "portable")(*theirs)
    np.testing.assert_allclose(ours[8].numpy(), theirs[8].numpy(), atol=TOL)
    np.testing.assert_allclose(ours[9].numpy(), theirs[9].numpy(), atol=5 * TOL)


def _ragged_args(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, lens: list[int], causal: int, rotary: int
) -> list[Any]:
    total, hq, dim = q.shape
    indptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    positions = np.concatenate([np.arange(n) for n in lens]).astype(np.int32)
    return [
        _t(q), _t(indptr), _t(k), _t(v), _t(indptr), _t(positions),
        _t(np.zeros(len(lens), np.int32)), _t(np.zeros((total, hq, dim), q.dtype)),
        _t(np.zeros((total, hq), np.float32)), causal, rotary, 1.0, 10000.0, 1 / np.sqrt(dim),
    ]  # fmt: skip


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("causal", [0, 1])
@pytest.mark.parametrize("heads", HEADS)
def test_ragged_prefill_matches_numpy(cpu: str, causal: int, heads: tuple[int, int, int]) -> None:
    hq, hk, dim = heads
    rng = np.random.default_rng(causal * 10 + dim + 1)
    lens = [7, 38, 1]  # under a chunk, several chunks with a remainder, one row
    total = sum(lens)
    q = rng.standard_normal((total, hq, dim)).astype(np.float32)
    k = rng.standard_normal((total, hk, dim)).astype(np.float32)
    v = rng.standard_normal((total, hk, dim)).astype(np.float32)
    args = _ragged_args(q, k, v, lens, causal, rotary=0)
    _build(cpu_attention.ragged_prefill_attention(hk, hq, dim, {}), cpu)(*args)
    start = 0
    for n in lens:
        part = slice(start, start + n)
        want, want_lse = attention_ref(q[part], k[part], v[part], causal=bool(causal))
        np.testing.assert_allclose(args[7].numpy()[part], want, atol=TOL)
        np.testing.assert_allclose(args[8].numpy()[part], want_lse, atol=5 * TOL)
        start += n


def test_ragged_prefill_with_inline_rope_matches_numpy() -> None:
    """Inline RoPE rotates queries and keys at their positions before attending."""
    hq, hk, dim = HEADS[0]
    rng = np.random.default_rng(11)
    lens = [12, 21]
    q = rng.standard_normal((33, hq, dim)).astype(np.float32)
    k = rng.standard_normal((33, hk, dim)).astype(np.float32)
    v = rng.standard_normal((33, hk, dim)).astype(np.float32)
    args = _ragged_args(q, k, v, lens, causal=1, rotary=1)
    _build(cpu_attention.ragged_prefill_attention(hk, hq, dim, {}), "native")(*args)
    theirs = _ragged_args(q, k, v, lens, causal=1, rotary=1)
    _build(_attention_prefill_ragged_cpu(hk, hq, dim, dim, "float32", {}), "portable")(*theirs)
    np.testing.assert_allclose(args[7].numpy(), theirs[7].numpy(), atol=TOL)
    start = 0
    for n in lens:
        part = slice(start, start + n)
        pos = np.arange(n)
        want, _ = attention_ref(
            rope_ref(q[part], pos, 10000.0).astype(np.float32),
            rope_ref(k[part], pos, 10000.0).astype(np.float32),
            v[part],
            causal=True,
        )
        np.testing.assert_allclose(args[7].numpy()[part], want, atol=1e-5)
        start += n


def _split_args(qkv: np.ndarray, positions: np.ndarray, hq: int, hk: int, apply: int) -> list:
    n, _, dim = qkv.shape
    return [
        _t(qkv), _t(positions), _t(np.zeros((n, hq, dim), qkv.dtype)),
        _t(np.zeros((n, hk, dim), qkv.dtype)), _t(np.zeros((n, hk, dim), qkv.dtype)), apply,
    ]  # fmt: skip


@pytest.mark.parametrize("cpu", CPUS)
@pytest.mark.parametrize("heads", HEADS)
def test_split_rotary_matches_numpy(cpu: str, heads: tuple[int, int, int]) -> None:
    hq, hk, dim = heads
    rng = np.random.default_rng(dim)
    qkv = rng.standard_normal((5, hq + 2 * hk, dim)).astype(np.float32)
    positions = np.array([0, 1, 7, 300, 4000], np.int32)
    theta = 100000.0
    kernel = _build(cpu_attention.split_rotary(theta, 1.0, dim, hq, hk, {}), cpu)
    args = _split_args(qkv, positions, hq, hk, apply=1)
    kernel(*args)
    # The angle is computed in float32: its error grows with the position (4000 * 6e-8 radians).
    for row, pos in enumerate(positions):
        tol = 2e-5 + 2e-7 * float(pos)
        for got, first, count in ((args[2], 0, hq), (args[3], hq, hk)):
            part = qkv[row : row + 1, first : first + count]
            want = rope_ref(part, positions[row : row + 1], theta)
            np.testing.assert_allclose(got.numpy()[row : row + 1], want, atol=tol)
    np.testing.assert_array_equal(args[4].numpy(), qkv[:, hq + hk :])
    plain = _split_args(qkv, positions, hq, hk, apply=0)
    kernel(*plain)
    np.testing.assert_array_equal(plain[2].numpy(), qkv[:, :hq])
    np.testing.assert_array_equal(plain[3].numpy(), qkv[:, hq : hq + hk])


def test_split_rotary_llama3_scaling_matches_tvm() -> None:
    """RoPE scalings take TVM's own angle functions: llama3's agrees with TVM's kernel."""
    hq, hk, dim = HEADS[0]
    scaling = {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((4, hq + 2 * hk, dim)).astype(np.float32)
    positions = np.array([3, 900, 9000, 20000], np.int32)
    ours, theirs = (_split_args(qkv, positions, hq, hk, apply=1) for _ in range(2))
    _build(cpu_attention.split_rotary(500000.0, 1.0, dim, hq, hk, scaling), "native")(*ours)
    tvm_kernel = llama_rope_with_position_map(500000.0, 1.0, dim, hq, hk, "float32", scaling)
    _build(tvm_kernel, "portable")(*theirs)
    for mine, want in zip(ours[2:5], theirs[2:5], strict=True):
        np.testing.assert_allclose(mine.numpy(), want.numpy(), atol=1e-5)
    # ... and differs from unscaled RoPE, so the scaling was applied
    plain = _split_args(qkv, positions, hq, hk, apply=1)
    _build(cpu_attention.split_rotary(500000.0, 1.0, dim, hq, hk, {}), "native")(*plain)
    assert np.abs(plain[2].numpy() - ours[2].numpy()).max() > 1e-2


# float16 caches (q4f16_1 and q0f16 models): data widened as it is loaded, float32 arithmetic,
# each output rounded once to float16 (half an ulp: 2**-11 relative, outputs here are below 4),
# lse float32. TVM's float16 CPU kernels also keep their scratch in float32; these are checked
# against float64 references computed from the same float16 values.
F16_TOL = 2e-3


@pytest.mark.parametrize("cpu", CPUS)
def test_float16_attention_matches_numpy(cpu: str) -> None:
    hq, hk, dim = HEADS[0]
    rng = np.random.default_rng(16)
    lengths = [1, 17, 70]
    cache = PagedCache(lengths, hk, dim, rng)
    cache.pages = cache.pages.astype(np.float16)
    q = rng.standard_normal((len(lengths), hq, dim)).astype(np.float16)
    args = _decode_args(cache, q, rotary=0)
    _build(cpu_attention.paged_decode_attention(hk, hq, dim, {}, "float16"), cpu)(*args)
    assert args[7].numpy().dtype == np.float16 and args[8].numpy().dtype == np.float32
    for seq in range(len(lengths)):
        k, v = cache.kv(seq)
        want, want_lse = attention_ref(q[seq : seq + 1].astype(np.float64), k, v, causal=False)
        np.testing.assert_allclose(args[7].numpy()[seq], want[0], atol=F16_TOL)
        np.testing.assert_allclose(args[8].numpy()[seq], want_lse[0], atol=5 * TOL)

    q_lens = [1, 17, 5]
    q = rng.standard_normal((sum(q_lens), hq, dim)).astype(np.float16)
    args = _paged_prefill_args(cache, q, q_lens, causal=1, rotary=0)
    _build(cpu_attention.paged_prefill_attention(hk, hq, dim, {}, "float16"), cpu)(*args)
    start = 0
    for seq, n in enumerate(q_lens):
        k, v = cache.kv(seq)
        want, want_lse = attention_ref(q[start : start + n].astype(np.float64), k, v, causal=True)
        np.testing.assert_allclose(args[8].numpy()[start : start + n], want, atol=F16_TOL)
        np.testing.assert_allclose(args[9].numpy()[start : start + n], want_lse, atol=5 * TOL)
        start += n

    lens = [7, 38]
    q, k, v = (
        rng.standard_normal((sum(lens), heads, dim)).astype(np.float16) for heads in (hq, hk, hk)
    )
    args = _ragged_args(q, k, v, lens, causal=1, rotary=0)
    _build(cpu_attention.ragged_prefill_attention(hk, hq, dim, {}, "float16"), cpu)(*args)
    start = 0
    for n in lens:
        part = slice(start, start + n)
        want, want_lse = attention_ref(q[part].astype(np.float64), k[part], v[part], causal=True)
        np.testing.assert_allclose(args[7].numpy()[part], want, atol=F16_TOL)
        np.testing.assert_allclose(args[8].numpy()[part], want_lse, atol=5 * TOL)
        start += n


@pytest.mark.parametrize("cpu", CPUS)
def test_float16_split_rotary_matches_numpy(cpu: str) -> None:
    hq, hk, dim = HEADS[0]
    rng = np.random.default_rng(17)
    qkv = rng.standard_normal((4, hq + 2 * hk, dim)).astype(np.float16)
    positions = np.array([0, 3, 70, 500], np.int32)
    args = _split_args(qkv, positions, hq, hk, apply=1)
    _build(cpu_attention.split_rotary(10000.0, 1.0, dim, hq, hk, {}, "float16"), cpu)(*args)
    want = rope_ref(qkv.astype(np.float64), positions, 10000.0)
    assert args[2].numpy().dtype == np.float16
    np.testing.assert_allclose(args[2].numpy(), want[:, :hq], atol=F16_TOL)
    np.testing.assert_allclose(args[3].numpy(), want[:, hq : hq + hk], atol=F16_TOL)
    np.testing.assert_array_equal(args[4].numpy(), qkv[:, hq + hk :])


def test_exp2_polynomial_is_exact_to_float32() -> None:
    """The vectorizable exp2 used for the softmax, over its whole range."""
    from tvm.script import tirx as T

    @T.prim_func
    def exp2(x: T.Buffer((4096,), "float32"), y: T.Buffer((4096,), "float32")) -> None:
        for i in T.vectorized(4096):
            y[i] = cpu_attention._exp2(x[i])

    x = np.concatenate([-np.geomspace(1e-7, 130.0, 4094), [0.0, -1000.0]]).astype(np.float32)
    y = np.zeros_like(x)
    args = [_t(x), _t(y)]
    _build(exp2, "native")(*args)
    got, want = args[1].numpy().astype(np.float64), np.exp2(x.astype(np.float64))
    tiny = x < -125
    assert np.all(got[tiny] <= 2.0**-124)
    np.testing.assert_allclose(got[~tiny], want[~tiny], rtol=4e-7)
