"""RecursiveLinks at inference time, in numpy (no torch needed to run the loop).

The trainer (PyTorch) and the browser (JS) have their own implementations of the same formulas;
tests hold the three to the same outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_erf = np.frompyfunc(math.erf, 1, 1)
LN_EPS = 1e-5


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch.nn.GELU() computes it."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, as torch.nn.GELU(approximate="tanh") computes it."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)


ACTIVATIONS = {"gelu": gelu, "gelu_tanh": gelu_tanh}


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


@dataclass
class Link:
    """One link: `kind` inner or outer, from agent `src` to agent `dst`."""

    name: str
    kind: str
    src: str
    dst: str
    variant: str  # "residual" or "ln-residual"
    params: dict[str, np.ndarray] = field(default_factory=dict)
    activation: str = "gelu"

    @property
    def in_dim(self) -> int:
        return int(self.params["w1"].shape[1])

    @property
    def out_dim(self) -> int:
        return int(self.params["w2"].shape[0])

    def __call__(self, h: np.ndarray) -> np.ndarray:
        p = {k: v.astype(np.float32) for k, v in self.params.items()}
        x = np.asarray(h, dtype=np.float32)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"link {self.name}: expects vectors of {self.in_dim}, got {x.shape}")
        act = ACTIVATIONS[self.activation]
        if self.variant == "residual":
            skip = x @ p["w3"].T if "w3" in p else x
            return skip + act(x @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
        if self.variant == "ln-residual":
            normed = layer_norm(x, p["ln_in.weight"], p["ln_in.bias"])
            inner = act(normed @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
            skip = x @ p["w3"].T if "w3" in p else x
            return layer_norm(inner + skip, p["ln_out.weight"], p["ln_out.bias"])
        raise ValueError(f"link {self.name}: unknown variant {self.variant!r}")
