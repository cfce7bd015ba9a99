"""What a link is, independent of any framework: its metadata and the shapes its tensors must have.

Every reader and writer (numpy forward, PyTorch module, JSON, safetensors, reference import)
derives names, forms and shapes from here, so the formats cannot drift apart; web/src/links.js
repeats these rules and tests/test_links_js_parity.py holds it to them.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mlcpatch.errors import MlcpatchError

# The link forms of docs/DESIGN.md ("variant" in the files).
VARIANTS = ("residual", "ln-residual")
KINDS = ("inner", "outer")
ACTIVATIONS = ("gelu", "gelu_tanh")
# LayerNorm epsilon is not stored in the files; every implementation uses this one.
LN_EPS = 1e-5
DEFAULT_BOTTLENECK = 256

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


class LinkSpecError(MlcpatchError, ValueError):
    """A link's metadata is inconsistent (unknown variant, bad name, impossible dimensions)."""


def check_name(name: str, what: str) -> str:
    # Tensor names are "<link>.<param>", so a dot inside a link name would be ambiguous.
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise LinkSpecError(f"{what} name {name!r} must match [A-Za-z0-9_-]+")
    return name


def default_hidden_width(variant: str, kind: str, in_dim: int, out_dim: int) -> int:
    """Width of the W1/W2 layer when none is given."""
    if variant == "ln-residual":
        # The reference code: inner MLP is square, outer MLP is twice the target width.
        return in_dim if kind == "inner" else 2 * out_dim
    return DEFAULT_BOTTLENECK


@dataclass(frozen=True)
class LinkSpec:
    """One link: metadata plus the width of its hidden layer (inferred from w1 when reading)."""

    name: str
    kind: str
    source: str
    target: str
    variant: str
    in_dim: int
    out_dim: int
    hidden: int
    activation: str = "gelu"

    def __post_init__(self) -> None:
        check_name(self.name, "link")
        if self.kind not in KINDS:
            raise LinkSpecError(f"link {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.variant not in VARIANTS:
            raise LinkSpecError(
                f"link {self.name}: variant {self.variant!r} is not one of {VARIANTS}"
            )
        if self.activation not in ACTIVATIONS:
            raise LinkSpecError(
                f"link {self.name}: activation {self.activation!r} is not one of {ACTIVATIONS}"
            )
        for role, agent in (("from", self.source), ("to", self.target)):
            if not isinstance(agent, str) or not agent:
                raise LinkSpecError(f"link {self.name}: {role!r} agent {agent!r} is not a name")
        for field in ("in_dim", "out_dim", "hidden"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise LinkSpecError(f"link {self.name}: {field} must be a positive integer")
        if self.kind == "inner" and self.in_dim != self.out_dim:
            # The inner residual is the identity, which only exists between equal dimensions.
            raise LinkSpecError(
                f"link {self.name}: an inner link maps a space onto itself, "
                f"but in_dim={self.in_dim} and out_dim={self.out_dim}"
            )

    @property
    def has_w3(self) -> bool:
        return self.kind == "outer"

    @property
    def has_layer_norms(self) -> bool:
        return self.variant == "ln-residual"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter name -> shape, in the canonical order of the file formats."""
        shapes: dict[str, tuple[int, ...]] = {
            "w1": (self.hidden, self.in_dim),
            "b1": (self.hidden,),
            "w2": (self.out_dim, self.hidden),
            "b2": (self.out_dim,),
        }
        if self.has_w3:
            shapes["w3"] = (self.out_dim, self.in_dim)
        if self.has_layer_norms:
            shapes["ln_in.weight"] = (self.in_dim,)
            shapes["ln_in.bias"] = (self.in_dim,)
            shapes["ln_out.weight"] = (self.out_dim,)
            shapes["ln_out.bias"] = (self.out_dim,)
        return shapes

    def num_params(self) -> int:
        total = 0
        for shape in self.param_shapes().values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total

    def manifest_entry(self) -> dict[str, Any]:
        """The links.json entry (DESIGN.md field names; 'hidden' is ours and optional)."""
        data = asdict(self)
        return {
            "name": data["name"],
            "kind": data["kind"],
            "from": data["source"],
            "to": data["target"],
            "variant": data["variant"],
            "in_dim": data["in_dim"],
            "out_dim": data["out_dim"],
            "hidden": data["hidden"],
            "activation": data["activation"],
        }

    @classmethod
    def from_manifest_entry(cls, entry: dict[str, Any], hidden: int) -> LinkSpec:
        """The inverse of `manifest_entry` (both file formats use these field names); the
        caller has checked the required fields are there and settles ``hidden``, whose
        fallback differs between formats."""
        return cls(
            name=entry["name"],
            kind=entry["kind"],
            source=entry["from"],
            target=entry["to"],
            variant=entry["variant"],
            in_dim=entry["in_dim"],
            out_dim=entry["out_dim"],
            hidden=hidden,
            activation=entry.get("activation", "gelu"),
        )


def inner_link_name(agent: str) -> str:
    return f"inner_{agent}"


def outer_link_name(source: str, target: str) -> str:
    return f"outer_{source}_to_{target}"


def make_spec(
    kind: str,
    source: str,
    target: str,
    in_dim: int,
    out_dim: int,
    variant: str = "residual",
    hidden: int | None = None,
    activation: str = "gelu",
) -> LinkSpec:
    """A spec with the conventional name and the variant's default width."""
    name = inner_link_name(source) if kind == "inner" else outer_link_name(source, target)
    width = hidden if hidden is not None else default_hidden_width(variant, kind, in_dim, out_dim)
    return LinkSpec(name, kind, source, target, variant, in_dim, out_dim, width, activation)
