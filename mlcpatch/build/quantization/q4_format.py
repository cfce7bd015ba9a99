"""The 4-bit group-quantized weight format (q4f16_1 / q4f32_1): numpy quantize, pack, dequantize.

This is the contract between the converter (which writes it) and the compiled kernels (which
read it, group_quant.py). A 2-D weight ``W[n, k]`` (``k`` = the input / reduction axis
of a linear layer, the hidden axis of an embedding) is stored as

- ``q_scale[n, g]``, ``g = ceil(k / 32)``, in the scale dtype (float16 or float32): one scale per
  group of 32 consecutive inputs, ``max|W[n, 32g:32g+32]| / 7`` rounded *up* to the scale dtype;
- ``q_weight[n, 4g]`` uint32: each word holds 8 codes of 4 bits, element ``e`` of word ``w``
  (input ``8w + e``) in bits ``4e .. 4e+3``; code ``q = clip(rint(W / scale) + 7, 0, 14)``.

Dequantized: ``W'[n, i] = (q - 7) * q_scale[n, i // 32]``. The scheme is symmetric (code 7 is
exactly zero, 15 is never used), like MLC-LLM's ``GroupQuantize``. Inputs past ``k`` in the
last group are padded with zeros, so any ``k`` is accepted.

Error bound: rounding the scale up makes ``|W / scale| <= 7`` for every element, so nothing is
clipped and ``|W - W'| <= scale / 2`` (up to one float32 rounding of ``W / scale``). A group of
zeros gets scale 0 and dequantizes to exact zeros.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mlcpatch.errors import MlcpatchError

GROUP_SIZE = 32
BITS = 4
PER_WORD = 32 // BITS  # codes per uint32
WORDS_PER_GROUP = GROUP_SIZE // PER_WORD
MAX_INT = 7  # codes 0..14 stand for -7..7
SCALE_DTYPES = ("float16", "float32")
ROW_BLOCK = 1024  # rows quantized at a time


class QuantizeError(MlcpatchError, ValueError):
    """A weight this format cannot represent (wrong rank, non-finite, scale overflow)."""


@dataclasses.dataclass(frozen=True)
class QuantizedWeight:
    """One original weight of a quantized model: the converter writes it as two parameters."""

    weight: str  # the unquantized parameter's name, e.g. "model.layers.0.mlp.down_proj.weight"
    shape: tuple[int, int]  # its shape [n, k]
    q_weight: str
    q_scale: str
    scale_dtype: str


def num_groups(k: int) -> int:
    return -(-k // GROUP_SIZE)


def quantized_shapes(shape: tuple[int, ...]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(q_weight shape, q_scale shape) of a weight of ``shape`` [n, k]."""
    if len(shape) != 2:
        raise QuantizeError(f"group quantization needs a 2-D weight, got shape {list(shape)}")
    n, k = (int(d) for d in shape)
    groups = num_groups(k)
    return (n, groups * WORDS_PER_GROUP), (n, groups)


def _round_up_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` (float32, >= 0) cast to ``dtype``, never below the float32 value."""
    with np.errstate(over="ignore"):  # overflow to inf is reported by the caller
        cast = values.astype(dtype)
    low = cast.astype(np.float32) < values
    if low.any():
        cast[low] = np.nextafter(cast[low], np.array(np.inf, dtype=dtype))
    return cast


def pack(codes: np.ndarray) -> np.ndarray:
    """Codes [n, k] (0..15, k a multiple of 8) -> uint32 words [n, k / 8]."""
    n, k = codes.shape
    nibbles = codes.astype(np.uint32).reshape(n, k // PER_WORD, PER_WORD)
    shifts = np.arange(PER_WORD, dtype=np.uint32) * BITS
    # Disjoint bit ranges: the sum is the bitwise or.
    return (nibbles << shifts).sum(axis=2, dtype=np.uint32)


def unpack(words: np.ndarray) -> np.ndarray:
    """uint32 words [n, w] -> codes [n, 8w] (uint8)."""
    shifts = np.arange(PER_WORD, dtype=np.uint32) * BITS
    codes = (words[..., None] >> shifts) & np.uint32(2**BITS - 1)
    return codes.reshape(words.shape[0], -1).astype(np.uint8)


def quantize(weight: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """W [n, k] -> (q_weight uint32 [n, 4g], q_scale [n, g] in ``scale_dtype``)."""
    if scale_dtype not in SCALE_DTYPES:
        raise QuantizeError(f"scale dtype must be one of {SCALE_DTYPES}, got {scale_dtype!r}")
    q_shape, s_shape = quantized_shapes(weight.shape)
    q_weight = np.empty(q_shape, dtype=np.uint32)
    q_scale = np.empty(s_shape, dtype=scale_dtype)
    # Row blocks bound the float32 temporaries to a few MiB whatever the weight's size.
    for start in range(0, weight.shape[0], ROW_BLOCK):
        rows = slice(start, start + ROW_BLOCK)
        q_weight[rows], q_scale[rows] = _quantize_rows(weight[rows], scale_dtype)
    return q_weight, q_scale


def _quantize_rows(weight: np.ndarray, scale_dtype: str) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(weight, dtype=np.float32)
    if not np.isfinite(w).all():
        raise QuantizeError("cannot quantize a weight with non-finite values")
    n, k = w.shape
    groups = num_groups(k)
    padded = np.zeros((n, groups * GROUP_SIZE), dtype=np.float32)
    padded[:, :k] = w
    grouped = padded.reshape(n, groups, GROUP_SIZE)
    scale = _round_up_to(np.abs(grouped).max(axis=2) / np.float32(MAX_INT), scale_dtype)
    if not np.isfinite(scale).all():
        raise QuantizeError(f"a group's scale overflows {scale_dtype} (weights too large)")
    scale32 = scale.astype(np.float32)[:, :, None]
    safe = np.where(scale32 > 0, scale32, np.float32(1))  # zero groups: all inputs are 0
    codes = np.clip(np.rint(grouped / safe) + MAX_INT, 0, 2 * MAX_INT)
    return pack(codes.reshape(n, -1)), scale


def dequantize(q_weight: np.ndarray, q_scale: np.ndarray, k: int) -> np.ndarray:
    """(q_weight, q_scale) -> W' [n, k] float32."""
    n, groups = q_scale.shape
    if q_weight.shape != (n, groups * WORDS_PER_GROUP) or not 0 < k <= groups * GROUP_SIZE:
        raise QuantizeError(
            f"q_weight {list(q_weight.shape)} / q_scale {list(q_scale.shape)} do not hold k={k}"
        )
    codes = unpack(q_weight).astype(np.float32) - MAX_INT
    scale = np.repeat(q_scale.astype(np.float32), GROUP_SIZE, axis=1)
    return (codes * scale)[:, :k]
