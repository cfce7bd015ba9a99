"""Quantization modes the build supports.

``q0`` = no quantization (weights in the model dtype). ``q4f16_1`` / ``q4f32_1`` = 4-bit group
quantization of every Linear and Embedding weight (groups of 32 inputs, one float16 / float32
scale each; MLC-LLM's names), dequantized inside the compiled kernels: see
q4_format.py for the stored format and group_quant.py for the kernels.
"""

from __future__ import annotations

import dataclasses

from mlcpatch.build.errors import BuildOptionError


@dataclasses.dataclass(frozen=True)
class Quantization:
    name: str
    model_dtype: str  # dtype of activations, norms, biases (and of unquantized weights)
    kind: str = "none"  # "none" or "group" (4-bit group quantization)

    @property
    def scale_dtype(self) -> str:
        """dtype of the group scales; MLC-LLM keeps them in the model dtype."""
        return self.model_dtype

    @property
    def quantized(self) -> bool:
        return self.kind != "none"


QUANTIZATIONS: dict[str, Quantization] = {
    "q0f32": Quantization("q0f32", "float32"),
    "q0f16": Quantization("q0f16", "float16"),
    "q4f32_1": Quantization("q4f32_1", "float32", "group"),
    "q4f16_1": Quantization("q4f16_1", "float16", "group"),
}


def get_quantization(name: str) -> Quantization:
    try:
        return QUANTIZATIONS[name]
    except KeyError:
        known = ", ".join(QUANTIZATIONS)
        raise BuildOptionError(f"unknown quantization {name!r} (supported: {known})") from None
