"""Small tensor helpers shared by the built-in model definitions."""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend.nn import Tensor, op


def index_last_token(x: Tensor) -> Tensor:
    """[b, s, d] -> [b, 1, d], the last position: prefill only needs logits for it."""

    def _index(t: te.Tensor) -> te.Tensor:
        b, s, d = t.shape
        return te.compute((b, 1, d), lambda i, _, k: t[i, s - 1, k], name="index")

    return op.tensor_expr_op(_index, name_hint="index", args=[x])


def rotary_embedding(x: Tensor, positions: Tensor, theta: float, factor: float = 1.0) -> Tensor:
    """HF-style RoPE (rotate-half layout) on x [b, s, heads, head_dim] at ``positions`` [b*s].

    For models whose layers use different RoPE bases (Gemma 3): the KV cache applies one base
    to every layer, so such models run the cache in ``RopeMode.NONE`` and rotate q/k here.
    ``factor`` is linear position scaling (HF's ``rope_type="linear"``). As in transformers,
    the angle and its cos/sin are computed in float32 and cast to x's dtype before the
    multiply-add.
    """

    def _rope(t: te.Tensor, pos: te.Tensor) -> te.Tensor:
        _, s, _, dim = t.shape
        d = int(dim)  # head_dim is static; the float constant below needs a Python int
        half = d // 2

        def value(i: tirx.Var, j: tirx.Var, h: tirx.Var, k: tirx.Var) -> tirx.PrimExpr:
            pair = tirx.if_then_else(k < half, k, k - half)
            exponent = (pair * 2).astype("float32") / tirx.const(float(d), "float32")
            inv_freq = tirx.const(1.0, "float32") / tirx.power(
                tirx.const(theta, "float32"), exponent
            )
            angle = pos[i * s + j].astype("float32") * (inv_freq / tirx.const(factor, "float32"))
            cos = tirx.cos(angle).astype(t.dtype)
            sin = tirx.sin(angle).astype(t.dtype)
            partner = tirx.if_then_else(k < half, -t[i, j, h, k + half], t[i, j, h, k - half])
            return t[i, j, h, k] * cos + partner * sin

        return te.compute(t.shape, value, name="rotary_embedding")

    return op.tensor_expr_op(_rope, name_hint="rotary_embedding", args=[x, positions])
