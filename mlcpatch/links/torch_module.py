"""The two link forms as PyTorch modules (the trainer's), with parameters named exactly as in the
link files. Built from the same LinkSpec as the numpy forms (`forward.py`) and held to the same
outputs by tests/test_links_contract.py. Imported only where torch is installed."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mlcpatch.links.linkfile import AgentInfo, LinkFile, LinkFileError
from mlcpatch.links.spec import LN_EPS, LinkSpec


def activation(x: torch.Tensor, name: str) -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if name == "gelu_tanh" else "none")


class RecursiveLink(nn.Module):
    """residual:    R(h) = W3·h + W2·σ(W1·h + b1) + b2          (W3 = I for inner links)
    ln-residual: R(h) = LN_out(W3·h + W2·σ(W1·LN_in(h) + b1) + b2)
    """

    def __init__(self, spec: LinkSpec) -> None:
        super().__init__()
        self.spec = spec
        self.w1 = nn.Parameter(torch.empty(spec.hidden, spec.in_dim))
        self.b1 = nn.Parameter(torch.zeros(spec.hidden))
        self.w2 = nn.Parameter(torch.zeros(spec.out_dim, spec.hidden))
        self.b2 = nn.Parameter(torch.zeros(spec.out_dim))
        nn.init.kaiming_uniform_(self.w1, a=math.sqrt(5))
        if spec.has_w3:
            self.w3 = nn.Parameter(torch.empty(spec.out_dim, spec.in_dim))
            nn.init.xavier_uniform_(self.w3)
        else:
            self.register_parameter("w3", None)
        if spec.has_layer_norms:
            self.ln_in = nn.LayerNorm(spec.in_dim, eps=LN_EPS)
            self.ln_out = nn.LayerNorm(spec.out_dim, eps=LN_EPS)
        else:
            self.ln_in = None
            self.ln_out = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # Links are tiny, so they always run in float32, outside autocast: the closed-form start
        # routes a linear map through GELU's near-linear regime, which relies on cancellations
        # that bf16/f16 cannot hold. Backbones may still run in bf16/f16 around them.
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self._forward(h.to(self.w1.dtype))

    def _forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.ln_in(h) if self.ln_in is not None else h
        out = F.linear(activation(F.linear(x, self.w1, self.b1), self.spec.activation), self.w2)
        out = out + self.b2
        out = out + (F.linear(h, self.w3) if self.w3 is not None else h)
        return self.ln_out(out) if self.ln_out is not None else out

    def load_arrays(self, params: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for name, tensor in self.named_parameters():
                tensor.copy_(torch.from_numpy(np.asarray(params[name], dtype=np.float32)))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            name: tensor.detach().to("cpu", torch.float32).numpy().copy()
            for name, tensor in self.named_parameters()
        }


class LinkSet(nn.Module):
    """All links of a system, addressable by name; the only trainable module of the trainer."""

    def __init__(self, specs: list[LinkSpec], agents: list[AgentInfo] | None = None) -> None:
        super().__init__()
        self.specs = {spec.name: spec for spec in specs}
        self.agents = list(agents or [])
        self.links = nn.ModuleDict({spec.name: RecursiveLink(spec) for spec in specs})

    def __getitem__(self, name: str) -> RecursiveLink:
        return self.links[name]  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return name in self.links

    def names(self) -> list[str]:
        return list(self.links.keys())

    def to_file(self) -> LinkFile:
        tensors: dict[str, np.ndarray] = {}
        for name in self.links:
            for param, array in self[name].arrays().items():
                tensors[f"{name}.{param}"] = array
        return LinkFile(list(self.agents), list(self.specs.values()), tensors)

    @classmethod
    def from_file(cls, link_file: LinkFile) -> LinkSet:
        link_set = cls(list(link_file.links), list(link_file.agents))
        for spec in link_file.links:
            link_set[spec.name].load_arrays(link_file.params(spec.name))
        return link_set

    def load_file(self, link_file: LinkFile) -> None:
        """Copy weights from a file whose links match this set's by name and shape."""
        for name, spec in self.specs.items():
            other = link_file.link(name)
            mine = (spec.variant, spec.activation, spec.param_shapes())
            theirs = (other.variant, other.activation, other.param_shapes())
            if mine != theirs:
                raise LinkFileError(
                    f"link {name!r}: the file has {theirs[0]}/{theirs[1]} with shapes "
                    f"{theirs[2]}, this system needs {mine[0]}/{mine[1]} with shapes {mine[2]}"
                )
            self[name].load_arrays(link_file.params(name))
