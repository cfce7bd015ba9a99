"""Memory bandwidth of this machine, measured with numpy, and the decode speed it allows.

A decode step of a small model reads every weight once, so ``bandwidth / weight bytes`` bounds
its tokens per second from above (caches aside: the array read here is larger than any of them).
The array is split across ``threads`` threads (numpy releases the GIL in copies and sums), as
the engines spread their matmuls; the best of a few passes is kept.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from mlcpatch.errors import MlcpatchError

MIB = 1024 * 1024


class BandwidthError(MlcpatchError, ValueError):
    """Bad settings for the bandwidth measurement."""


def _best_seconds(pool: ThreadPoolExecutor, jobs: list, passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for future in [pool.submit(job) for job in jobs]:
            future.result()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(threads: int, size_mib: int = 256, passes: int = 5) -> dict[str, float]:
    """GB/s (1e9 bytes) of a read-only pass (sum) and of a copy (read + write) over the array."""
    if threads < 1:
        raise BandwidthError(f"threads must be at least 1, got {threads}")
    if size_mib < 1 or passes < 1:
        raise BandwidthError(f"size_mib and passes must be positive, got {size_mib}, {passes}")
    src = np.ones(size_mib * MIB // 8, dtype=np.float64)
    dst = np.empty_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(threads) as pool:
        read_s = _best_seconds(pool, [lambda s=s: src[s].sum() for s in parts], passes)
        copy_s = _best_seconds(pool, [lambda s=s: np.copyto(dst[s], src[s]) for s in parts], passes)
    nbytes = src.nbytes
    return {
        "threads": threads,
        "array_mib": size_mib,
        "read_gb_s": nbytes / read_s / 1e9,
        "copy_gb_s": 2 * nbytes / copy_s / 1e9,
    }


def decode_limit_tok_s(weight_bytes: int, bandwidth_gb_s: float) -> float:
    """The most decode steps per second that reading ``weight_bytes`` per step allows."""
    if weight_bytes <= 0:
        raise BandwidthError(f"weight_bytes must be positive, got {weight_bytes}")
    return bandwidth_gb_s * 1e9 / weight_bytes
