"""Group quantization of a model definition (q4f16_1 / q4f32_1), applied to the nn.Module.

``quantize_model`` swaps every ``nn.Linear`` and ``nn.Embedding`` of an instantiated model for a
4-bit module holding ``q_weight`` (uint32) and ``q_scale`` parameters in the layout of
q4_format.py, so the model definitions in mlcpatch/models/ stay as they are. Norms and
biases keep the model dtype.

The packed weights are what lives on the device: every kernel that reads a weight dequantizes
it itself. A linear layer is one PrimFunc with a ``q4_dequantize`` block feeding a matmul block:
on GPUs dlight's GEMV / matmul rules inline the dequantization into the matmul (the shape of
MLC-LLM's fused dequantize-matmul kernels); on the CPU mlcpatch/build/cpu_schedule.py does it
(dequantizing in vector registers, or a small weight tile per task), with ``inline_dequantize``
as the fallback for shapes it does not schedule, so no full-size weight is ever written.
The embedding gathers and dequantizes rows in one kernel.
"""

from __future__ import annotations

import functools
from typing import Any

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from mlcpatch.build.quantization import q4_format as fmt
from mlcpatch.build.quantization.q4_format import QuantizedWeight, QuantizeError

DEQUANT_BLOCK = "q4_dequantize"


# --- kernels (tensor expressions) -----------------------------------------------------------


def _code(q_weight: te.Tensor, row: Any, col: Any) -> Any:
    """The 4-bit code of input ``col`` of ``row`` (uint32 0..15)."""
    word = q_weight[row, col // fmt.PER_WORD]
    shift = ((col % fmt.PER_WORD) * fmt.BITS).astype("uint32")
    return tirx.bitwise_and(tirx.shift_right(word, shift), tirx.const(2**fmt.BITS - 1, "uint32"))


def _dequant(q_weight: te.Tensor, q_scale: te.Tensor, row: Any, col: Any, dtype: str) -> Any:
    value = _code(q_weight, row, col).astype(dtype) - tirx.const(fmt.MAX_INT, dtype)
    return value * q_scale[row, col // fmt.GROUP_SIZE].astype(dtype)


def _linear_te(
    x: te.Tensor, q_weight: te.Tensor, q_scale: te.Tensor, *, k: int, out_dtype: str
) -> te.Tensor:
    """y[..., n] = sum_i x[..., i] * W'[n, i], W' dequantized in x's dtype (nn.Linear's math)."""
    n = q_weight.shape[0]
    weight = te.compute(
        (n, k), lambda r, c: _dequant(q_weight, q_scale, r, c, x.dtype), name=DEQUANT_BLOCK
    )
    red = te.reduce_axis((0, k), name="k")
    return te.compute(
        (*x.shape[:-1], n),
        lambda *idx: te.sum(
            x[(*idx[:-1], red)].astype(out_dtype) * weight[idx[-1], red].astype(out_dtype),
            axis=red,
        ),
        name="q4_matmul",
    )


def _take_te(
    q_weight: te.Tensor, q_scale: te.Tensor, ids: te.Tensor, *, k: int, dtype: str
) -> te.Tensor:
    return te.compute(
        (ids.shape[0], k),
        lambda t, c: _dequant(q_weight, q_scale, ids[t], c, dtype),
        name="q4_take",
    )


# --- modules -----------------------------------------------------------------------------------


class _Quantized(nn.Module):
    """Shared by the quantized modules: packed parameters whose dtypes ``to()`` leaves alone."""

    def __init__(self, rows: int, k: int, scale_dtype: str, dtype: str) -> None:
        super().__init__()
        q_shape, s_shape = fmt.quantized_shapes((rows, k))
        self.k = k
        self.dtype = dtype
        self.q_weight = nn.Parameter(q_shape, "uint32")
        self.q_scale = nn.Parameter(s_shape, scale_dtype)

    def to(self, dtype: str | None = None) -> None:
        # Module.to would recast q_weight and q_scale; only the model dtype may change.
        if dtype is not None:
            self.dtype = dtype

    def _matmul(self, x: Tensor, out_dtype: str) -> Tensor:
        kernel = functools.partial(_linear_te, k=self.k, out_dtype=out_dtype)
        return op.tensor_expr_op(kernel, "q4_linear", [x, self.q_weight, self.q_scale])


class GroupQuantLinear(_Quantized):
    """nn.Linear with a 4-bit weight: ``y = x W'^T + b``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        scale_dtype: str,
        dtype: str,
        bias: bool,
        out_dtype: str | None = None,
    ) -> None:
        super().__init__(out_features, in_features, scale_dtype, dtype)
        self.in_features = in_features
        self.out_features = out_features
        self.out_dtype = out_dtype
        bias_dtype = out_dtype or dtype
        self.bias = nn.Parameter((out_features,), bias_dtype) if bias else None

    def to(self, dtype: str | None = None) -> None:
        super().to(dtype)
        if self.bias is not None and self.out_dtype is None:
            self.bias.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        out = self._matmul(x, self.out_dtype or x.dtype)
        return out + self.bias if self.bias is not None else out


class GroupQuantEmbedding(_Quantized):
    """nn.Embedding with a 4-bit table; ``lm_head_forward`` is the tied LM head (float32 out)."""

    def __init__(self, num: int, dim: int, scale_dtype: str, dtype: str) -> None:
        super().__init__(num, dim, scale_dtype, dtype)
        self.num = num
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        kernel = functools.partial(_take_te, k=self.dim, dtype=self.dtype)
        flat = x if x.ndim == 1 else op.reshape(x, shape=[-1])
        rows = op.tensor_expr_op(kernel, "q4_take", [self.q_weight, self.q_scale, flat])
        return rows if x.ndim == 1 else op.reshape(rows, shape=[*x.shape, self.dim])

    def lm_head_forward(self, x: Tensor) -> Tensor:
        # What the model definitions' embedding classes do with the full table: x @ W^T in f32.
        return self._matmul(x, "float32")


# --- the transform -----------------------------------------------------------------------------

# Methods a subclass of nn.Linear / nn.Embedding may define and still be replaced: the quantized
# module provides them with the same meaning (lm_head_forward: x @ W^T in float32, as the model
# definitions write it). Anything else, an overridden forward included, would be silently lost.
_REPLACEABLE: dict[type, set[str]] = {nn.Linear: set(), nn.Embedding: {"lm_head_forward"}}


def _check_replaceable(name: str, node: nn.Module, base: type) -> None:
    extra: set[str] = set()
    for cls in type(node).__mro__:
        if cls is base:
            break
        extra |= {n for n, v in vars(cls).items() if callable(v) and not n.startswith("__")}
    unknown = sorted(extra - _REPLACEABLE[base])
    if unknown:
        raise QuantizeError(
            f"cannot quantize {name or 'the model'}: {type(node).__name__} defines "
            f"{', '.join(unknown)}, which the 4-bit {base.__name__} does not provide "
            "(set no_quantization = True on it to keep it unquantized)"
        )


def _static(name: str, *dims: Any) -> list[int]:
    if not all(isinstance(d, int) for d in dims):
        raise QuantizeError(f"cannot quantize {name}: its weight shape {list(dims)} is not static")
    return list(dims)


class _Quantizer(nn.Mutator):
    def __init__(self, scale_dtype: str) -> None:
        super().__init__()
        self.scale_dtype = scale_dtype
        self.weights: dict[str, QuantizedWeight] = {}
        self._done: dict[int, nn.Module] = {}  # a module shared by two parents is replaced once

    def visit_module(self, name: str, node: nn.Module) -> Any:
        if id(node) in self._done:
            return self._done[id(node)]
        if getattr(node, "no_quantization", False):
            return node
        if isinstance(node, nn.Linear):
            new: nn.Module = self._linear(name, node)
        elif isinstance(node, nn.Embedding):
            new = self._embedding(name, node)
        else:
            return self.visit(name, node)
        self._done[id(node)] = new
        return new

    def _record(self, name: str, shape: list[int]) -> None:
        prefix = f"{name}." if name else ""
        self.weights[f"{prefix}weight"] = QuantizedWeight(
            f"{prefix}weight",
            (shape[0], shape[1]),
            f"{prefix}q_weight",
            f"{prefix}q_scale",
            self.scale_dtype,
        )

    def _linear(self, name: str, node: nn.Linear) -> GroupQuantLinear:
        _check_replaceable(name, node, nn.Linear)
        out_features, in_features = _static(name, *node.weight.shape)
        self._record(name, [out_features, in_features])
        return GroupQuantLinear(
            in_features,
            out_features,
            self.scale_dtype,
            str(node.weight.dtype),
            bias=getattr(node, "bias", None) is not None,
            out_dtype=node.out_dtype,
        )

    def _embedding(self, name: str, node: nn.Embedding) -> GroupQuantEmbedding:
        _check_replaceable(name, node, nn.Embedding)
        num, dim = _static(name, *node.weight.shape)
        self._record(name, [num, dim])
        return GroupQuantEmbedding(num, dim, self.scale_dtype, str(node.weight.dtype))


def quantize_model(model: nn.Module, scale_dtype: str) -> dict[str, QuantizedWeight]:
    """Replace ``model``'s Linear and Embedding submodules in place with 4-bit ones.

    Returns, per original weight name, the two parameters the converter must write for it.
    """
    if isinstance(model, (nn.Linear, nn.Embedding)):
        raise QuantizeError("quantize_model expects a model, not a single layer")
    quantizer = _Quantizer(scale_dtype)
    quantizer.visit("", model)
    if not quantizer.weights:
        raise QuantizeError("the model has no Linear or Embedding layer to quantize")
    return quantizer.weights


# --- CPU scheduling ----------------------------------------------------------------------------


def inline_dequantize(mod: Any) -> Any:
    """Inline every ``q4_dequantize`` block into its matmul (for targets without dlight).

    Unscheduled, the block would write the whole dequantized weight to a scratch buffer on every
    call (113 MB for SmolLM2's LM head); inlined, the matmul reads the packed words directly.
    """
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            inlined = inline_dequantize_func(func)
            if inlined is not None:
                updates[gvar] = inlined
    for gvar, func in updates.items():
        mod[gvar] = func
    return mod


def inline_dequantize_func(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """``func`` with its ``q4_dequantize`` block inlined, or None when it has none."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        block = sch.get_sblock(DEQUANT_BLOCK)
    except s_tir.schedule.ScheduleError:  # no such block: not one of our kernels
        return None
    sch.compute_inline(block)
    _split_words(sch)
    return sch.mod["main"]


def _split_words(sch: Any) -> None:
    """Reduce word by word: k = 8 * word + e turns k // 8 and k % 8 into loop variables, and the
    8 codes of a word into an unrolled inner loop that loads the word once."""
    matmul = sch.get_sblock("q4_matmul")
    *_, k = sch.get_loops(matmul)
    extent = sch.get(k).extent
    if isinstance(extent, tirx.IntImm) and int(extent) % fmt.PER_WORD == 0:
        _, inner = sch.split(k, factors=[None, fmt.PER_WORD])
        sch.unroll(inner)
