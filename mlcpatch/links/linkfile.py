"""A set of links as plain numpy arrays: what every file format reads into and writes from."""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlcpatch.errors import MlcpatchError
from mlcpatch.links.spec import LinkSpec, LinkSpecError, check_name


class LinkFileError(MlcpatchError, ValueError):
    """A link file is malformed or does not match what it is paired with; the message says where."""


def parse_json(text: str | bytes, where: str) -> Any:
    """json.loads with every way hostile input can fail turned into a LinkFileError."""
    try:
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LinkFileError(f"{where}: not valid JSON ({err})") from err
    except RecursionError as err:
        raise LinkFileError(f"{where}: not valid JSON (nested too deeply)") from err


def read_json_file(path: pathlib.Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LinkFileError(f"{path}: not valid JSON (not UTF-8 text)") from err
    except OSError as err:
        raise LinkFileError(f"{path}: cannot read ({err.strerror or err})") from err
    return parse_json(text, str(path))


@dataclass(frozen=True)
class AgentInfo:
    """What a link file records about an agent: enough to check links against its model."""

    name: str
    hidden_size: int
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "hidden_size": self.hidden_size}
        if self.model:
            data["model"] = self.model
        return data

    @classmethod
    def from_json(cls, data: Any, where: str) -> AgentInfo:
        """An agents[] entry of either format; `where` names the file and the entry."""
        if not isinstance(data, dict) or "name" not in data or "hidden_size" not in data:
            raise LinkFileError(f"{where} needs 'name' and 'hidden_size'")
        size = data["hidden_size"]
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise LinkFileError(f"{where}: hidden_size {size!r} is not a positive integer")
        model = data.get("model", "")
        if not isinstance(model, str):
            raise LinkFileError(f"{where}: 'model' {model!r} is not a string")
        return cls(data["name"], size, model)


@dataclass
class LinkFile:
    """Links with their metadata and float32 tensors named '<link>.<param>'."""

    agents: list[AgentInfo]
    links: list[LinkSpec]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)

    def link(self, name: str) -> LinkSpec:
        for spec in self.links:
            if spec.name == name:
                return spec
        raise LinkFileError(f"no link named {name!r}; have {[s.name for s in self.links]}")

    def find(self, kind: str, source: str, target: str) -> LinkSpec | None:
        """The link of this kind from `source` to `target`, whatever its name."""
        for spec in self.links:
            if (spec.kind, spec.source, spec.target) == (kind, source, target):
                return spec
        return None

    def params(self, name: str) -> dict[str, np.ndarray]:
        spec = self.link(name)
        return {p: self.tensors[f"{name}.{p}"] for p in spec.param_shapes()}

    def validate(self, source: str) -> None:
        """Check names, duplicates, and every tensor against its link's expected shape."""
        seen: set[str] = set()
        for agent in self.agents:
            try:
                check_name(agent.name, "agent")
            except LinkSpecError as err:
                raise LinkFileError(f"{source}: {err}") from err
            if agent.name in seen:
                raise LinkFileError(f"{source}: agent {agent.name!r} is listed twice")
            seen.add(agent.name)
        names: set[str] = set()
        expected: set[str] = set()
        for spec in self.links:
            if spec.name in names:
                raise LinkFileError(f"{source}: link {spec.name!r} is listed twice")
            names.add(spec.name)
            for param, shape in spec.param_shapes().items():
                key = f"{spec.name}.{param}"
                expected.add(key)
                if key not in self.tensors:
                    raise LinkFileError(
                        f"{source}: link {spec.name!r} ({spec.variant}, {spec.kind}) is missing "
                        f"tensor {key!r} (expected shape {list(shape)})"
                    )
                actual = tuple(self.tensors[key].shape)
                if actual != shape:
                    raise LinkFileError(
                        f"{source}: link {spec.name!r} tensor {key!r} has shape {list(actual)}, "
                        f"expected {list(shape)} (in_dim={spec.in_dim}, out_dim={spec.out_dim}, "
                        f"hidden={spec.hidden})"
                    )
                if not np.all(np.isfinite(self.tensors[key])):
                    raise LinkFileError(f"{source}: tensor {key!r} contains NaN or infinity")
        extra = sorted(set(self.tensors) - expected)
        if extra:
            raise LinkFileError(
                f"{source}: tensor {extra[0]!r} belongs to no link in the manifest "
                f"({len(extra)} unexpected tensor(s))"
            )
        if self.agents:
            self._check_dims(
                {a.name: a.hidden_size for a in self.agents}, source, "its agents list"
            )

    def check_models(self, hidden_sizes: dict[str, int], source: str = "links") -> None:
        """Check the links against the models they will run with (agent name -> hidden size)."""
        self._check_dims(hidden_sizes, source, "this system")

    def _check_dims(self, dims: dict[str, int], source: str, where: str) -> None:
        """Every link's ends name an agent in ``dims`` (the file's own agents list, or the
        models a run brings: ``where`` says which) whose hidden size equals the link's dim."""
        for spec in self.links:
            for role, agent, dim in (
                ("from", spec.source, spec.in_dim),
                ("to", spec.target, spec.out_dim),
            ):
                if agent not in dims:
                    raise LinkFileError(
                        f"{source}: link {spec.name!r} {role} agent {agent!r} is not in "
                        f"{where} (agents: {', '.join(sorted(dims))})"
                    )
                if dims[agent] != dim:
                    side = "in_dim" if role == "from" else "out_dim"
                    raise LinkFileError(
                        f"{source}: link {spec.name!r} has {side}={dim} but agent {agent!r} has "
                        f"hidden size {dims[agent]} in {where}"
                    )
