"""Accurate f32 ``sin``/``cos`` for WebGPU kernels.

WGSL only promises ``sin``/``cos`` to about 5e-4 absolute, and SwiftShader (the CPU WebGPU of
headless Chromium) is off by ~2e-4: RoPE turns that into ~1e-3 on the logits. So the build
re-registers TVM's WebGPU lowering of ``tirx.sin``/``tirx.cos`` with a Cody-Waite range
reduction to [-pi/4, pi/4] and Cephes' minimax polynomials, which only need ``+ - * floor``
(exact in every WebGPU implementation). Accurate to a few f32 ulps for |x| < 8192 * pi/2.

Constants go into the shader as bit patterns: TVM prints f32 literals in WGSL with 7 digits,
which would round the split of pi/2 and undo the reduction.
"""

from __future__ import annotations

from typing import Any

# Bumped whenever the emitted code changes: it is part of the WebGPU build's identity.
TRIG_VERSION = 1

# f32 bit patterns.
_TWO_OVER_PI = 0x3F22F983
# pi/2 = P1 + P2 + P3, with P1 (8 significant bits) and P2 (11 bits) short enough that k * P1
# and k * P2 are exact for |k| < 2**13, which is what makes the subtraction exact.
_PIO2 = (0x3FC90000, 0x39FDA000, 0x33A22169)
# Cephes sinf / cosf minimax coefficients on [-pi/4, pi/4].
_SIN = (0xBE2AAAA3, 0x3C08839E, 0xB94CA1F9)  # -1.6666655e-1, 8.3321612e-3, -1.9515296e-4
_COS = (0x3D2AAAA5, 0xBAB6061A, 0x37CCF5CE)  # 4.1666646e-2, -1.3887316e-3, 2.4433157e-5

_LEVEL = 100  # above TVM's own WebGPU rules (level 10), so ours wins
_registered = False


def _f32(bits: int) -> Any:
    from tvm import tirx

    return tirx.reinterpret("float32", tirx.const(bits, "uint32"))


def _poly(r2: Any, coeffs: tuple[int, int, int]) -> Any:
    c0, c1, c2 = (_f32(c) for c in coeffs)
    return c0 + r2 * (c1 + r2 * c2)


def _accurate(x: Any, quadrant_shift: int) -> Any:
    """sin(x + quadrant_shift * pi/2) as a TIR expression over f32 ``x``."""
    from tvm import tirx

    k = tirx.Var("trig_k", "float32")
    r = tirx.Var("trig_r", "float32")
    r2 = tirx.Var("trig_r2", "float32")
    q = tirx.Var("trig_q", "int32")
    sin_r = r + r * r2 * _poly(r2, _SIN)
    cos_r = tirx.const(1.0, "float32") - tirx.const(0.5, "float32") * r2 + r2 * r2 * _poly(r2, _COS)
    # Quadrant q of x: sin x = [sin r, cos r, -sin r, -cos r][q].
    val = tirx.Select((q & 1) == 1, cos_r, sin_r)
    body = tirx.Select((q & 2) == 2, -val, val)
    p1, p2, p3 = (_f32(p) for p in _PIO2)
    reduced = ((x - k * p1) - k * p2) - k * p3
    nearest = tirx.floor(x * _f32(_TWO_OVER_PI) + tirx.const(0.5, "float32"))
    quadrant = (tirx.Cast("int32", k) + quadrant_shift) & 3
    return tirx.Let(
        k, nearest, tirx.Let(r, reduced, tirx.Let(r2, r * r, tirx.Let(q, quadrant, body)))
    )


def _lowering(quadrant_shift: int, fallback: Any) -> Any:
    def lower(op: Any) -> Any:
        from tvm import tirx

        if str(op.ty) != "float32":  # f16 models keep TVM's rule (and its precision)
            return fallback(op)
        x = op.args[0]
        if isinstance(x, tirx.Var):
            return _accurate(x, quadrant_shift)
        # x appears twice in the reduction: bind it once rather than compute it twice.
        var = tirx.Var("trig_x", "float32")
        return tirx.Let(var, x, _accurate(var, quadrant_shift))

    return lower


def register_accurate_trig() -> None:
    """Replace the WebGPU lowering of tirx.sin / tirx.cos in this process (idempotent)."""
    global _registered
    if _registered:
        return
    import tvm
    from tvm import tirx

    for name, shift in (("tirx.sin", 0), ("tirx.cos", 1)):
        fallback = tvm.ir.Op.get(name).get_attr("webgpu.FLowerIntrinsic")
        tirx.register_intrin_lowering(name, "webgpu", f=_lowering(shift, fallback), level=_LEVEL)
    _registered = True
