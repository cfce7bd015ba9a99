"""recursivelink.json: the older browser tools' format (nested lists), extended with metadata.

Written files keep the old top level ({"hidden", "links": [{"w1","b1","w2","b2","w3"?}]}); each
link additionally carries name/kind/from/to/variant/in_dim/out_dim/hidden/activation and, for
ln-residual, "ln_in.weight" etc. Old readers that look only at w1..w3 still find them; inner
links omit w3 (the identity), as the old format did.

Legacy files (no per-link metadata) are read as residual links named link0, link1, ...; the old
trainer's input normalisation ("norm": true) or a learned "scale" other than 1 cannot be
expressed by DESIGN.md's link forms, so such files are refused with a message saying so.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np

from mlcpatch.links.linkfile import AgentInfo, LinkFile, LinkFileError, read_json_file
from mlcpatch.links.spec import LinkSpec, LinkSpecError

# The name the trainer writes it under; any .json path is read.
FILE_NAME = "recursivelink.json"
JSON_VERSION = 2
_GELU_FLAG = {"gelu": "erf", "gelu_tanh": "tanh"}
_FROM_GELU_FLAG = {"erf": "gelu", "tanh": "gelu_tanh"}
_META_FIELDS = (
    "name",
    "kind",
    "from",
    "to",
    "variant",
    "in_dim",
    "out_dim",
    "hidden",
    "activation",
)


def to_json_dict(link_file: LinkFile) -> dict[str, Any]:
    link_file.validate("links to write")
    if link_file.agents:
        hidden = link_file.agents[0].hidden_size
    else:
        hidden = link_file.links[0].in_dim if link_file.links else 0
    activations = {spec.activation for spec in link_file.links}
    data: dict[str, Any] = {
        "format_version": JSON_VERSION,
        # Old readers expect one hidden size; with heterogeneous agents the per-link dims rule.
        "hidden": hidden,
        "norm": False,
        "agents": [agent.to_json() for agent in link_file.agents],
        "links": [],
    }
    if len(activations) == 1:
        data["gelu"] = _GELU_FLAG[activations.pop()]
    for spec in link_file.links:
        entry = spec.manifest_entry()
        for param in spec.param_shapes():
            entry[param] = link_file.tensors[f"{spec.name}.{param}"].astype(np.float32).tolist()
        data["links"].append(entry)
    return data


def write_json(link_file: LinkFile, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json_dict(link_file)) + "\n")
    return path


def _array(value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise LinkFileError(f"{where} is not a rectangular array of numbers") from err
    return array


def _legacy_spec(
    index: int, entry: dict[str, Any], tensors: dict[str, np.ndarray], top: dict[str, Any]
) -> LinkSpec:
    w1 = tensors.get("w1")
    w2 = tensors.get("w2")
    if w1 is None or w2 is None or w1.ndim != 2 or w2.ndim != 2:
        raise LinkFileError(f"links[{index}]: legacy link needs 2-D 'w1' and 'w2'")
    kind = "outer" if "w3" in entry else "inner"
    variant = "ln-residual" if "ln_in.weight" in entry else "residual"
    flag = top.get("gelu", "erf")
    activation = _FROM_GELU_FLAG.get(flag, "gelu") if isinstance(flag, str) else "gelu"
    return LinkSpec(
        name=f"link{index}",
        kind=kind,
        source="agent",
        target="agent",
        variant=variant,
        in_dim=int(w1.shape[1]),
        out_dim=int(w2.shape[0]),
        hidden=int(w1.shape[0]),
        activation=activation,
    )


def from_json_dict(data: Any, source: str) -> LinkFile:
    if not isinstance(data, dict):
        raise LinkFileError(f"{source}: top level is not a JSON object")
    if not isinstance(data.get("links"), list):
        raise LinkFileError(f"{source}: field 'links' is missing or not a list")
    if data.get("norm") is True:
        raise LinkFileError(
            f"{source}: 'norm': true (inputs unit-normalised by the older trainer) cannot be "
            "expressed as a residual or ln-residual link; retrain with mlcpatch train"
        )
    if data.get("fmt") not in (None, "f32"):
        raise LinkFileError(f"{source}: encoding fmt={data.get('fmt')!r} is not supported")
    if not isinstance(data.get("agents") or [], list):
        raise LinkFileError(f"{source}: field 'agents' is not a list")
    agents = [
        AgentInfo.from_json(agent, f"{source}: agents[{index}]")
        for index, agent in enumerate(data.get("agents") or [])
    ]
    specs: list[LinkSpec] = []
    tensors: dict[str, np.ndarray] = {}
    for index, entry in enumerate(data["links"]):
        if not isinstance(entry, dict):
            raise LinkFileError(f"{source}: links[{index}] is not an object")
        label = entry.get("name", f"links[{index}]")
        scale = entry.get("scale", 1.0)
        if scale != 1.0:
            raise LinkFileError(
                f"{source}: link {label!r} has 'scale' {scale}; learned output scales from the "
                "older trainer cannot be expressed in this format"
            )
        params = {
            key: _array(value, f"{source}: link {label!r} tensor {key!r}")
            for key, value in entry.items()
            if key in ("w1", "b1", "w2", "b2", "w3") or key.startswith(("ln_in.", "ln_out."))
        }
        has_meta = any(field in entry for field in _META_FIELDS if field != "name")
        try:
            if has_meta:
                missing = [f for f in _META_FIELDS[:7] if f not in entry]
                if missing:
                    raise LinkFileError(f"{source}: link {label!r} is missing field {missing[0]!r}")
                w1 = params.get("w1")
                hidden = entry.get(
                    "hidden", int(w1.shape[0]) if w1 is not None and w1.ndim == 2 else 0
                )
                spec = LinkSpec.from_manifest_entry(entry, hidden)
            else:
                spec = _legacy_spec(index, entry, params, data)
        except LinkSpecError as err:
            raise LinkFileError(f"{source}: {err}") from err
        specs.append(spec)
        tensors.update({f"{spec.name}.{key}": value for key, value in params.items()})
    link_file = LinkFile(agents, specs, tensors)
    link_file.validate(source)
    return link_file


def read_json(path: pathlib.Path) -> LinkFile:
    return from_json_dict(read_json_file(path), str(path))
