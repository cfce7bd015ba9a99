"""Training checkpoints: link weights, optimiser and schedule state, and where training stood."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass, field
from typing import Any

import torch

from mlcpatch.errors import MlcpatchError

CHECKPOINT_NAME = "checkpoint.pt"
# Changing any of these changes what a step computes, so resuming across them would be wrong.
RESUME_KEYS = (
    "models",
    "agents",
    "pattern",
    "loop_pattern",
    "rounds",
    "latent_steps",
    "variant",
    "bottleneck",
    "activation",
    "data",
    "data_size",
    "validation_fraction",
    "batch_size",
    "grad_accum",
    "seed",
    "train_inner_in_outer",
    "scale_lr",
    "keep_best",
)


class ResumeError(MlcpatchError, RuntimeError):
    """A checkpoint is missing or was written by an incompatible configuration."""


@dataclass
class TrainingState:
    """Where training stands; `stage_step` counts optimiser steps within `stage`."""

    completed: list[str] = field(default_factory=list)
    stage: str = ""
    stage_step: int = 0
    links: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # The best links validation has seen in the current stage: {"score", "step", "links"}.
    best: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(out: pathlib.Path) -> pathlib.Path:
    return out / "checkpoint" / CHECKPOINT_NAME


def save_state(state: TrainingState, out: pathlib.Path) -> None:
    path = checkpoint_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted save never leaves a half-written checkpoint.
    partial = path.with_suffix(".partial")
    torch.save(state.__dict__, partial)
    partial.replace(path)


def load_state(out: pathlib.Path, config: dict[str, Any]) -> TrainingState:
    path = checkpoint_path(out)
    if not path.is_file():
        raise ResumeError(f"--resume: no checkpoint at {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = TrainingState(**data)
    for key in RESUME_KEYS:
        if state.config.get(key) != config.get(key):
            raise ResumeError(
                f"--resume: {key!r} was {state.config.get(key)!r} in the checkpoint, "
                f"now {config.get(key)!r}"
            )
    return state
