"""Reading RoPE settings from HF configs of every transformers generation (no tvm import).

transformers < 5 writes ``rope_theta`` and ``rope_scaling`` (with ``type`` or ``rope_type``);
transformers >= 5 writes ``rope_parameters`` holding both.
"""

from __future__ import annotations

from typing import Any

DEFAULT_ROPE_THETA = 10000.0


def rope_theta_from(source: dict[str, Any], default: float = DEFAULT_ROPE_THETA) -> float:
    # transformers 5 folds a legacy rope_theta into rope_parameters, so the latter wins.
    params = source.get("rope_parameters") or {}
    if params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    if source.get("rope_theta") is not None:
        return float(source["rope_theta"])
    return float(default)


def rope_scaling_from(source: dict[str, Any]) -> dict[str, Any] | None:
    """The scaling dict with a ``rope_type`` key, or None for plain RoPE."""
    scaling = source.get("rope_scaling") or source.get("rope_parameters") or None
    if not scaling:
        return None
    scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None)
    if rope_type in (None, "default"):
        return None
    return {"rope_type": rope_type, **scaling}
