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


def layer_type_rope_from(
    source: dict[str, Any], layer_type: str, legacy_theta_key: str, default_theta: float
) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) of one layer type in configs that give RoPE per layer type (Gemma 3).

    transformers >= 5 nests them: ``rope_parameters = {"full_attention": {...},
    "sliding_attention": {...}}``. Older configs give ``rope_theta`` + ``rope_scaling`` for the
    full-attention layers and ``rope_local_base_freq`` (never scaled) for the sliding ones;
    ``legacy_theta_key`` names the theta key of ``layer_type`` in that layout.
    """
    params = source.get("rope_parameters") or {}
    nested = params.get(layer_type)
    if isinstance(nested, dict):
        flat = {"rope_parameters": nested}
        return rope_theta_from(flat, default=default_theta), rope_scaling_from(flat)
    if layer_type != "full_attention":
        theta = source.get(legacy_theta_key)
        return (float(theta) if theta is not None else float(default_theta)), None
    # A flat rope_parameters (no per-layer-type keys) describes the full-attention layers.
    if any(k in params for k in ("rope_type", "type", "rope_theta")):
        legacy = {"rope_parameters": params}
    else:
        legacy = {
            "rope_theta": source.get(legacy_theta_key),
            "rope_scaling": source.get("rope_scaling"),
        }
    return rope_theta_from(legacy, default=default_theta), rope_scaling_from(legacy)
