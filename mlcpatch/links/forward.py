"""The link forms in numpy: what the loop runs (no torch needed to run the loop).

    residual:    R(h) = W3·h + W2·σ(W1·h + b1) + b2          (W3 = I for inner links)
    ln-residual: R(h) = LN_out(W3·h + W2·σ(W1·LN_in(h) + b1) + b2)

The trainer's PyTorch module (`torch_module.py`) and the browser (`web/src/links.js`) compute the
same functions; tests hold the three to the same outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mlcpatch.links.linkfile import LinkFile
from mlcpatch.links.spec import LN_EPS, LinkSpec

Params = dict[str, np.ndarray]
Activation = Callable[[np.ndarray], np.ndarray]

_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as torch.nn.GELU() computes it."""
    return (0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))).astype(x.dtype)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, as torch.nn.GELU(approximate="tanh") computes it."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)
    return (0.5 * x * (1.0 + np.tanh(inner))).astype(x.dtype)


# Keyed by spec.ACTIVATIONS.
ACTIVATION_FUNCTIONS: dict[str, Activation] = {"gelu": gelu, "gelu_tanh": gelu_tanh}


def layer_norm(
    x: np.ndarray, weight: np.ndarray | float = 1.0, bias: np.ndarray | float = 0.0
) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * weight + bias


def residual(x: np.ndarray, p: Params, act: Activation) -> np.ndarray:
    skip = x @ p["w3"].T if "w3" in p else x
    return skip + act(x @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]


def ln_residual(x: np.ndarray, p: Params, act: Activation) -> np.ndarray:
    normed = layer_norm(x, p["ln_in.weight"], p["ln_in.bias"])
    inner = act(normed @ p["w1"].T + p["b1"]) @ p["w2"].T + p["b2"]
    skip = x @ p["w3"].T if "w3" in p else x
    return layer_norm(inner + skip, p["ln_out.weight"], p["ln_out.bias"])


# Keyed by spec.VARIANTS.
FORMS: dict[str, Callable[[np.ndarray, Params, Activation], np.ndarray]] = {
    "residual": residual,
    "ln-residual": ln_residual,
}


@dataclass
class Link:
    """One link ready to run: its spec (from a validated file) and its float32 parameters."""

    spec: LinkSpec
    params: Params = field(default_factory=dict)

    @classmethod
    def from_file(cls, link_file: LinkFile, name: str) -> Link:
        return cls(link_file.link(name), link_file.params(name))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def in_dim(self) -> int:
        return self.spec.in_dim

    @property
    def out_dim(self) -> int:
        return self.spec.out_dim

    def __call__(self, h: np.ndarray) -> np.ndarray:
        p = {k: v.astype(np.float32) for k, v in self.params.items()}
        x = np.asarray(h, dtype=np.float32)
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"link {self.name}: expects vectors of {self.in_dim}, got {x.shape}")
        return FORMS[self.spec.variant](x, p, ACTIVATION_FUNCTIONS[self.spec.activation])
