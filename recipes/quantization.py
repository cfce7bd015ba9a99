"""Quantization modes the build supports: only unquantized ones for now (q0 = no quantization)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Quantization:
    name: str
    model_dtype: str  # dtype of weights and activations in the compiled model


QUANTIZATIONS: dict[str, Quantization] = {
    "q0f32": Quantization("q0f32", "float32"),
    "q0f16": Quantization("q0f16", "float16"),
}


def get_quantization(name: str) -> Quantization:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        known = ", ".join(QUANTIZATIONS)
        raise ValueError(f"unknown quantization {name!r} (supported: {known})") from None
