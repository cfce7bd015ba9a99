"""Small tensor helpers shared by the built-in model definitions."""

from __future__ import annotations

from tvm import te
from tvm.relax.frontend.nn import Tensor, op


def index_last_token(x: Tensor) -> Tensor:
    """[b, s, d] -> [b, 1, d], the last position: prefill only needs logits for it."""

    def _index(t: te.Tensor) -> te.Tensor:
        b, s, d = t.shape
        return te.compute((b, 1, d), lambda i, _, k: t[i, s - 1, k], name="index")

    return op.tensor_expr_op(_index, name_hint="index", args=[x])
