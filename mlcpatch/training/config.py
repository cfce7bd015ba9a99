"""Training configuration: defaults, TOML/JSON files, and command-line overrides, in that order."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass, field
from typing import Any

from mlcpatch.errors import MlcpatchError
from mlcpatch.training.system import (
    AgentConfig,
    SystemConfig,
    default_agent_names,
    default_role,
)
from mlcpatch.training.tiny import TINY_MODELS

STAGES = ("inner", "outer", "both")
TARGETS = ("solution", "answer")
PRECISIONS = ("auto", "no", "bf16", "fp16")


class ConfigError(MlcpatchError, ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass
class TrainConfig:
    models: list[str] = field(default_factory=lambda: list(TINY_MODELS))
    agents: list[dict[str, str]] = field(default_factory=list)
    pattern: list[str] = field(default_factory=list)
    # A loop pattern (built-in name or .toml): the agents, roles and hand-offs of `mlcpatch run`.
    # `models` then gives one model for all agents or one per agent, in the pattern's order.
    loop_pattern: str | None = None
    rounds: int = 2
    latent_steps: int = 4
    variant: str = "residual"
    bottleneck: int | None = None
    activation: str = "gelu"
    data: str | None = None  # JSONL file, or a built-in question set (its train split)
    data_size: int = 2000  # questions drawn from a built-in set
    # What the final agent learns to write: "solution" (the item's worked answer, when the data
    # has one; the bare answer otherwise) or "answer" (always the bare answer).
    target: str = "solution"
    validation_fraction: float = 0.125
    stage: str = "both"
    inner_steps: int = 100
    steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    inner_lr: float = 1e-3
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    grad_clip: float = 1.0
    scale_lr: bool = True  # lr · sqrt(64 / widest hidden size), see trainer.LR_REFERENCE_HIDDEN
    keep_best: bool = True  # end each stage with the best links validation saw (start included)
    mse_weight: float = 0.1
    train_inner_in_outer: bool = False
    init: str = "closed-form"  # "closed-form", "random", or a link file path
    precision: str = "auto"
    base_dtype: str = "auto"
    grad_checkpointing: bool = False
    max_length: int = 256
    eval_every: int = 100
    eval_examples: int = 32
    max_new_tokens: int = 12
    save_every: int = 100
    # Write the links at every stage-2 validation to OUT/snapshots/step-NNNNN, so that a curve of
    # accuracy on held-out questions against steps can be measured afterwards (`mlcpatch eval
    # --links` once per snapshot). Off by default: one file per validation adds up.
    snapshots: bool = False
    out: str = "links-out"
    resume: bool = False
    seed: int = 0
    export_dtype: str = "f32"
    export_json: bool = True
    progress: bool = True
    threads: int = 0  # 0: one thread for tiny CPU backbones, else torch's default

    def system(self) -> SystemConfig:
        if self.loop_pattern:
            return self._pattern_system(self.loop_pattern)
        if self.agents:
            agents = []
            for index, entry in enumerate(self.agents):
                if not isinstance(entry, dict) or "model" not in entry:
                    raise ConfigError(f"agents[{index}]: needs at least 'model'")
                unknown = set(entry) - {"name", "model", "role"}
                if unknown:
                    raise ConfigError(f"agents[{index}]: unknown key {sorted(unknown)[0]!r}")
                name = entry.get("name") or default_agent_names(len(self.agents))[index]
                agents.append(
                    AgentConfig(name, entry["model"], entry.get("role") or default_role(name))
                )
        else:
            names = default_agent_names(len(self.models))
            agents = [
                AgentConfig(name, model, default_role(name))
                for name, model in zip(names, self.models, strict=True)
            ]
        return SystemConfig(
            agents=agents,
            pattern=list(self.pattern),
            rounds=self.rounds,
            latent_steps=self.latent_steps,
            variant=self.variant,
            bottleneck=self.bottleneck,
            activation=self.activation,
        )

    def _pattern_system(self, name: str) -> SystemConfig:
        from mlcpatch.loop.patterns import PatternError, load_pattern

        if self.agents:
            raise ConfigError("give either loop_pattern (with models) or agents, not both")
        try:
            loop = load_pattern(name)
        except PatternError as err:
            raise ConfigError(str(err)) from None
        names = [role.name for role in loop.agents]
        if len(self.models) not in (1, len(names)):
            raise ConfigError(
                f"pattern {loop.name} has {len(names)} agents ({', '.join(names)}); give one "
                f"model for all of them or one per agent, not {len(self.models)}"
            )
        models = self.models * len(names) if len(self.models) == 1 else self.models
        agents = [
            AgentConfig(role.name, model, role.template)
            for role, model in zip(loop.agents, models, strict=True)
        ]
        return SystemConfig(
            agents=agents,
            pattern=names,
            rounds=self.rounds,
            latent_steps=self.latent_steps,
            variant=self.variant,
            bottleneck=self.bottleneck,
            activation=self.activation,
            loop=loop,
        )

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage {self.stage!r} is not one of {STAGES}")
        if self.target not in TARGETS:
            raise ConfigError(f"target {self.target!r} is not one of {TARGETS}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.base_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(
                f"base_dtype {self.base_dtype!r} is not auto/float32/bfloat16/float16"
            )
        if self.export_dtype not in ("f16", "f32"):
            raise ConfigError(f"export_dtype {self.export_dtype!r} is not f16 or f32")
        for key in ("steps", "inner_steps", "eval_every", "save_every", "eval_examples"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must not be negative")
        for key in ("batch_size", "grad_accum", "max_length", "max_new_tokens"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1")
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError("validation_fraction must be in [0, 1)")
        self.system().validate()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tiny_overrides() -> dict[str, Any]:
    """--tiny: the built-in heterogeneous pair, sized to finish in well under a minute on CPU."""
    return {
        "models": list(TINY_MODELS),
        "agents": [],
        "rounds": 2,
        "latent_steps": 2,
        "bottleneck": 64,
        "inner_steps": 50,
        "steps": 150,
        "lr": 3e-3,
        "batch_size": 8,
        "eval_every": 50,
        "eval_examples": 8,
        "save_every": 50,
        "max_new_tokens": 6,
    }


def read_config_file(path: pathlib.Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from err
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError as err:  # Python 3.10
            raise ConfigError("TOML configs need Python 3.11+; use a .json config") from err
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: invalid TOML ({err})") from err
    elif path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: invalid JSON ({err})") from err
    else:
        raise ConfigError(f"{path}: config must be .toml or .json")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a table/object")
    return {key.replace("-", "_"): value for key, value in data.items()}


def build_config(*layers: dict[str, Any]) -> TrainConfig:
    """Defaults, then each layer in turn (file, --tiny, command line); None means 'not given'."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key not in known:
                raise ConfigError(f"unknown config key {key!r}")
            if value is not None:
                values[key] = value
    defaults = TrainConfig()
    for key, value in values.items():
        _check_type(key, value, getattr(defaults, key))
    config = TrainConfig(**values)
    config.validate()
    return config


def _check_type(key: str, value: Any, default: Any) -> None:
    if key == "bottleneck":
        expected: tuple[type, ...] = (int,)
    elif key in ("data", "loop_pattern"):
        expected = (str,)
    elif isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, float):
        expected = (int, float)
    elif default is None:
        expected = (str,)
    else:
        expected = (type(default),)
    if isinstance(value, bool) and bool not in expected:
        raise ConfigError(f"config key {key!r} must be {expected[-1].__name__}, got a boolean")
    if not isinstance(value, expected):
        raise ConfigError(
            f"config key {key!r} must be {expected[-1].__name__}, got {type(value).__name__}"
        )
