"""Accurate f32 ``sin``, ``cos``, ``exp``, ``exp2`` and ``pow`` for WebGPU kernels.

WGSL only bounds these builtins loosely (sin/cos to ~5e-4 absolute, exp/pow to a few ulps plus
a term growing with the argument), and SwiftShader, the CPU WebGPU of headless Chromium, uses
that freedom: measured against float64 over typical ranges, sin/cos are off by ~2e-4, exp by
17 ulps, pow by 10 ulps, exp2 by 3 ulps. RoPE, SiLU and softmax turn that into ~1e-3 (sin/cos)
or ~1e-5 differences from the CPU build on the logits. So the build re-registers TVM's WebGPU
lowering of these intrinsics (f32 only; other dtypes keep TVM's rule) with range reductions and
polynomials that only need ``+ - * / floor`` and bit casts, which every WebGPU implementation
computes exactly or correctly rounded. Measured: sin/cos 1.5 ulps, exp/exp2 < 1 ulp, pow < 2
ulps (for |sin/cos argument| < 8192 * pi/2 and a positive pow base).

Constants go into the shader as bit patterns: TVM prints f32 literals in WGSL with 7 digits,
which would round the split constants and undo the reductions.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

# Bumped whenever the emitted code changes: it is part of the WebGPU build's identity.
MATH_VERSION = 2

_LEVEL = 100  # above TVM's own WebGPU rules (level 10), so ours win
_registered = False


def _bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def _f32(value: float | int) -> Any:
    """An exact f32 constant: a bit pattern (int) or a float rounded to f32 once, here."""
    from tvm import tirx

    bits = value if isinstance(value, int) else _bits(value)
    return tirx.reinterpret("float32", tirx.const(bits, "uint32"))


def _horner(x: Any, coeffs: list[float]) -> Any:
    """c0 + x * (c1 + x * (c2 + ...)); TVM fuses each step into an fma."""
    acc = _f32(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = _f32(c) + x * acc
    return acc


def _let(name: str, value: Any, body: Callable[[Any], Any], dtype: str = "float32") -> Any:
    """``body(v)`` with ``v`` bound once to ``value`` (expressions reuse it several times)."""
    from tvm import tirx

    var = tirx.Var(name, dtype)
    return tirx.Let(var, value, body(var))


# --- sin / cos ---------------------------------------------------------------------------------

_TWO_OVER_PI = 0x3F22F983
# pi/2 = P1 + P2 + P3, with P1 (8 significant bits) and P2 (11 bits) short enough that k * P1
# and k * P2 are exact for |k| < 2**13, which is what makes the subtraction exact.
_PIO2 = (0x3FC90000, 0x39FDA000, 0x33A22169)
# Cephes sinf / cosf minimax coefficients on [-pi/4, pi/4].
_SIN = [0xBE2AAAA3, 0x3C08839E, 0xB94CA1F9]  # -1.6666655e-1, 8.3321612e-3, -1.9515296e-4
_COS = [0x3D2AAAA5, 0xBAB6061A, 0x37CCF5CE]  # 4.1666646e-2, -1.3887316e-3, 2.4433157e-5


def _sin_quadrant(x: Any, quadrant_shift: int) -> Any:
    """sin(x + quadrant_shift * pi/2) for f32 ``x`` (a Var)."""
    from tvm import tirx

    p1, p2, p3 = (_f32(p) for p in _PIO2)
    nearest = tirx.floor(x * _f32(_TWO_OVER_PI) + _f32(0.5))

    def reduced(k: Any) -> Any:
        def by_quadrant(r: Any) -> Any:
            def poly(r2: Any) -> Any:
                sin_r = r + r * r2 * _horner(r2, _SIN)
                cos_r = _f32(1.0) - _f32(0.5) * r2 + r2 * r2 * _horner(r2, _COS)
                q = (tirx.Cast("int32", k) + quadrant_shift) & 3
                # Quadrant q of x: sin x = [sin r, cos r, -sin r, -cos r][q].
                val = tirx.Select((q & 1) == 1, cos_r, sin_r)
                return tirx.Select((q & 2) == 2, -val, val)

            return _let("trig_r2", r * r, poly)

        return _let("trig_r", ((x - k * p1) - k * p2) - k * p3, by_quadrant)

    return _let("trig_k", nearest, reduced)


# --- exp2 / exp / pow ------------------------------------------------------------------------

# 2**f = sum (f ln2)^i / i! on [-0.5, 0.5]; the degree-7 truncation error is 6e-9, below an ulp.
_EXP2_TAYLOR = [math.log(2) ** i / math.factorial(i) for i in range(8)]
# e**r on [-ln2/2, ln2/2]; truncation error 5e-9.
_EXP_TAYLOR = [1.0 / math.factorial(i) for i in range(8)]
_LOG2E = math.log2(math.e)
# ln2 = LN2_HI + LN2_LO with LN2_HI's 14 significant bits making k * LN2_HI exact.
_LN2_HI = 0x3F317200  # 0.693145751953125
_LN2_LO = 0x35BFBE8E  # 1.4286068e-06
# ln((1+s)/(1-s)) / 2 = s + s^3/3 + s^5/5 + ...: enough terms for |s| <= 0.1716.
_ATANH_SERIES = [1.0, 1 / 3, 1 / 5, 1 / 7, 1 / 9]
_SQRT2 = 0x3FB504F3
_MIN_NORMAL = 0x00800000
_MAX_FINITE = 0x7F7FFFFF


def _scale_by_power_of_two(p: Any, k: Any) -> Any:
    """p * 2**k for an integral f32 ``k``: exact, overflowing to inf, 0 below normal range.

    WGSL rejects an infinite constant (the shader fails to compile), so overflow happens at
    run time: 2**k as two factors, each a normal number.
    """
    from tvm import tirx

    def power(e: Any) -> Any:
        return tirx.reinterpret("float32", tirx.shift_left(e + 127, 23))

    def scaled(ki: Any) -> Any:
        first = tirx.min(ki, 127)
        second = tirx.max(tirx.min(ki - 127, 127), 0)
        in_range = (p * power(first)) * power(second)
        return tirx.Select(ki < -126, _f32(0.0), in_range)

    return _let("exp_k", tirx.Cast("int32", k), scaled, "int32")


def _exp2_parts(hi: Any, lo: Any) -> Any:
    """2**(hi + lo), ``lo`` a small correction to ``hi``."""
    from tvm import tirx

    def with_k(k: Any) -> Any:
        # hi - k is exact (k is hi rounded to an integer); the correction joins after.
        frac = (hi - k) + lo
        return _scale_by_power_of_two(_horner(frac, _EXP2_TAYLOR), k)

    return _let("exp_n", tirx.floor(hi + _f32(0.5)), with_k)


def _exp2(x: Any) -> Any:
    return _exp2_parts(x, _f32(0.0))


def _exp(x: Any) -> Any:
    from tvm import tirx

    def with_k(k: Any) -> Any:
        r = (x - k * _f32(_LN2_HI)) - k * _f32(_LN2_LO)
        return _scale_by_power_of_two(_horner(r, _EXP_TAYLOR), k)

    return _let("exp_n", tirx.floor(x * _f32(_LOG2E) + _f32(0.5)), with_k)


def _log2_mantissa(m: Any) -> Any:
    """log2(m) for m in [sqrt(1/2), sqrt(2)], to about an ulp of its absolute value."""

    def series(s: Any) -> Any:
        return _let("log_s2", s * s, lambda s2: (_f32(2.0) * s) * _horner(s2, _ATANH_SERIES))

    ln_m = _let("log_s", (m - _f32(1.0)) / (m + _f32(1.0)), series)
    return ln_m * _f32(_LOG2E)


def _pow(x: Any, y: Any, fallback: Any) -> Any:
    """x**y for x > 0 as 2**(y * log2 x), the product kept in two parts; else ``fallback``."""
    from tvm import tirx

    def with_bits(bits: Any) -> Any:
        # x = m * 2**e with m in [1, 2), then folded into [sqrt(1/2), sqrt(2)).
        exponent = tirx.Cast("int32", tirx.shift_right(bits, 23)) - 127
        mantissa = tirx.reinterpret("float32", (bits & 0x7FFFFF) | 0x3F800000)
        big = mantissa > _f32(_SQRT2)
        m = tirx.Select(big, mantissa * _f32(0.5), mantissa)
        e = tirx.Cast("float32", tirx.Select(big, exponent + 1, exponent))

        def product(y_hi: Any) -> Any:
            # e * y split exactly: e has at most 8 significant bits and y_hi 12, so e * y_hi
            # and e * (y - y_hi) are exact; the small parts then join y * log2(m).
            lo = e * (y - y_hi) + y * _log2_mantissa(m)
            return _exp2_parts(e * y_hi, lo)

        y_top = tirx.reinterpret(
            "float32", tirx.reinterpret("uint32", y) & tirx.const(0xFFFFF000, "uint32")
        )
        return _let("pow_yhi", y_top, product)

    accurate = _let("pow_bits", tirx.reinterpret("uint32", x), with_bits, "uint32")
    # Zero, negative, subnormal, inf and NaN bases keep the builtin (and its special cases).
    normal_positive = tirx.all(x >= _f32(_MIN_NORMAL), x <= _f32(_MAX_FINITE))
    return tirx.Select(normal_positive, accurate, fallback)


# --- registration ------------------------------------------------------------------------------


def _bind_args(op: Any, build: Callable[..., Any]) -> Any:
    """``build(*args)`` with every non-Var argument bound once by a Let."""
    from tvm import tirx

    args = list(op.args)

    def bind(i: int, bound: list[Any]) -> Any:
        if i == len(args):
            return build(*bound)
        if isinstance(args[i], tirx.Var):
            return bind(i + 1, [*bound, args[i]])
        return _let(f"math_arg{i}", args[i], lambda v: bind(i + 1, [*bound, v]))

    return bind(0, [])


def _lowering(name: str, fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def lower(op: Any) -> Any:
        if str(op.ty) != "float32":  # f16 models keep TVM's rule (and its precision)
            return fallback(op)
        if name == "tirx.sin":
            return _bind_args(op, lambda x: _sin_quadrant(x, 0))
        if name == "tirx.cos":
            return _bind_args(op, lambda x: _sin_quadrant(x, 1))
        if name == "tirx.exp":
            return _bind_args(op, _exp)
        if name == "tirx.exp2":
            return _bind_args(op, _exp2)
        from tvm import tirx

        def pow_of(x: Any, y: Any) -> Any:
            builtin = fallback(tirx.call_intrin("float32", "tirx.pow", x, y))
            return _pow(x, y, builtin)

        return _bind_args(op, pow_of)

    return lower


OPS = ("tirx.sin", "tirx.cos", "tirx.exp", "tirx.exp2", "tirx.pow")


def register_accurate_math() -> None:
    """Replace the WebGPU lowering of OPS in this process (idempotent)."""
    global _registered
    if _registered:
        return
    import tvm
    from tvm import tirx

    for name in OPS:
        fallback = tvm.ir.Op.get(name).get_attr("webgpu.FLowerIntrinsic")
        tirx.register_intrin_lowering(name, "webgpu", f=_lowering(name, fallback), level=_LEVEL)
    _registered = True
