"""Import link checkpoints saved as PyTorch state dicts in the RecursiveMAS reference layout.

Layout assumed (attribute names of the reference adapters, read from their saved state dicts):
  inner  2layer_ln_res   pre_ln, proj1 [H,H], proj2 [H,H], post_ln      -> ln-residual inner
  inner  2layer_res      proj1 [H,H], proj2 [H,H]                       -> residual inner
  outer  2layer_ln_res   ln_source, proj1 [2O,I], proj2 [O,2O], residual_proj [O,I], ln_target
                                                                        -> ln-residual outer
  outer  2layer_res      proj1, proj2, residual_proj                    -> residual outer
Keys may carry a common prefix ("adapter.", "module.", ...). The residual projection's bias has
no slot of its own in our format; it is added into b2, which is exact because both are summed
before the output LayerNorm. Inner 2layer and 2layer_res have identical shapes, so for inner
links without LayerNorms the adapter type must come from adapter_config.json beside the file or
from the caller; the linear and non-residual adapter types have no equivalent and are refused.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from mlcpatch.links.linkfile import AgentInfo, LinkFile, LinkFileError
from mlcpatch.links.spec import LinkSpec, inner_link_name, outer_link_name

_ANCHOR = "proj1.weight"
_RESIDUAL_INNER_TYPES = {"res_adapter", "2layer_res"}


def _unwrap(obj: Any, source: str) -> dict[str, Any]:
    for key in ("state_dict", "model", "adapter"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict) and _ANCHOR not in obj:
            if any(str(k).endswith(_ANCHOR) for k in obj[key]):
                obj = obj[key]
    if not isinstance(obj, dict):
        raise LinkFileError(f"{source}: not a state dict (got {type(obj).__name__})")
    return obj


def _strip_prefix(state: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    anchors = [k for k in state if isinstance(k, str) and k.endswith(_ANCHOR)]
    if not anchors:
        raise LinkFileError(f"{source}: no '{_ANCHOR}' tensor, so not a reference link checkpoint")
    prefixes = sorted({k[: -len(_ANCHOR)] for k in anchors})
    if len(prefixes) > 1:
        raise LinkFileError(
            f"{source}: holds several links (prefixes {prefixes}); save them one per file"
        )
    prefix = prefixes[0]
    return {
        k[len(prefix) :]: np.asarray(v.detach().to("cpu").float().numpy())
        for k, v in state.items()
        if isinstance(k, str) and k.startswith(prefix) and hasattr(v, "detach")
    }


def _adapter_type(path: pathlib.Path, given: str | None) -> str | None:
    if given:
        return given
    config = path.parent / "adapter_config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("adapter_type")
        return str(value) if value else None
    return None


def _require(params: dict[str, np.ndarray], keys: list[str], what: str, source: str) -> None:
    missing = [k for k in keys if k not in params]
    if missing:
        raise LinkFileError(f"{source}: looks like {what} but lacks {missing}")


def import_reference(
    path: pathlib.Path,
    source_agent: str = "agent",
    target_agent: str | None = None,
    adapter_type: str | None = None,
) -> LinkFile:
    """Read one reference link checkpoint (.pt state dict) into a LinkFile with one link."""
    import torch

    where = str(path)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files
        raise LinkFileError(f"{where}: cannot load as a PyTorch checkpoint ({err})") from err
    params = _strip_prefix(_unwrap(obj, where), where)
    if "proj2.weight" not in params:
        raise LinkFileError(
            f"{where}: single-layer (linear) reference adapters have no equivalent link form"
        )
    w1, w2 = params[_ANCHOR], params["proj2.weight"]
    in_dim, hidden, out_dim = int(w1.shape[1]), int(w1.shape[0]), int(w2.shape[0])
    is_outer = "residual_proj.weight" in params or "ln_source.weight" in params
    target_agent = target_agent or source_agent
    b2 = params.get("proj2.bias", np.zeros(out_dim, np.float32))
    out: dict[str, np.ndarray] = {
        "w1": w1,
        "b1": params.get("proj1.bias", np.zeros(hidden, np.float32)),
        "w2": w2,
        "b2": b2,
    }
    if is_outer:
        if "residual_proj.weight" not in params:
            raise LinkFileError(f"{where}: outer adapters without residual_proj are not supported")
        w3 = params["residual_proj.weight"]
        if w3.shape != (out_dim, in_dim):
            raise LinkFileError(
                f"{where}: residual_proj.weight has shape {list(w3.shape)}, "
                f"expected {[out_dim, in_dim]} from proj1/proj2"
            )
        out["w3"] = w3
        out["b2"] = b2 + params.get("residual_proj.bias", np.zeros(out_dim, np.float32))
        has_ln = "ln_source.weight" in params or "ln_target.weight" in params
        if has_ln:
            _require(
                params,
                ["ln_source.weight", "ln_source.bias", "ln_target.weight", "ln_target.bias"],
                "an outer ln-residual adapter",
                where,
            )
            out["ln_in.weight"], out["ln_in.bias"] = (
                params["ln_source.weight"],
                params["ln_source.bias"],
            )
            out["ln_out.weight"], out["ln_out.bias"] = (
                params["ln_target.weight"],
                params["ln_target.bias"],
            )
        variant, kind = ("ln-residual" if has_ln else "residual"), "outer"
        name = outer_link_name(source_agent, target_agent)
    else:
        if in_dim != out_dim:
            raise LinkFileError(
                f"{where}: inner adapter maps {in_dim} -> {out_dim}; must be square"
            )
        has_ln = "pre_ln.weight" in params or "post_ln.weight" in params
        if has_ln:
            _require(
                params,
                ["pre_ln.weight", "pre_ln.bias", "post_ln.weight", "post_ln.bias"],
                "an inner ln-residual adapter",
                where,
            )
            out["ln_in.weight"], out["ln_in.bias"] = params["pre_ln.weight"], params["pre_ln.bias"]
            out["ln_out.weight"], out["ln_out.bias"] = (
                params["post_ln.weight"],
                params["post_ln.bias"],
            )
            variant = "ln-residual"
        else:
            kind_name = _adapter_type(path, adapter_type)
            if kind_name is None:
                raise LinkFileError(
                    f"{where}: an inner adapter without LayerNorms is either '2layer' (no "
                    "residual) or '2layer_res'; the shapes cannot tell: give the adapter type"
                )
            if kind_name not in _RESIDUAL_INNER_TYPES:
                raise LinkFileError(
                    f"{where}: adapter type {kind_name!r} has no equivalent link form "
                    f"(supported without LayerNorm: {sorted(_RESIDUAL_INNER_TYPES)})"
                )
            variant = "residual"
        kind, target_agent = "inner", source_agent
        name = inner_link_name(source_agent)
    spec = LinkSpec(
        name, kind, source_agent, target_agent, variant, in_dim, out_dim, hidden, "gelu"
    )
    agents = [AgentInfo(source_agent, in_dim)]
    if target_agent != source_agent:
        agents.append(AgentInfo(target_agent, out_dim))
    link_file = LinkFile(
        agents, [spec], {f"{name}.{k}": v.astype(np.float32) for k, v in out.items()}
    )
    link_file.validate(where)
    return link_file
