"""Errors of the MLC-LLM backend; each message is one line for the user."""

from __future__ import annotations

from mlcpatch.errors import MlcpatchError


class MlcBuildError(MlcpatchError, RuntimeError):
    """A build with MLC-LLM that cannot proceed; the message is one line for the user."""


class MlcNotFoundError(MlcBuildError):
    pass


class MlcStepError(MlcBuildError):
    """An `mlc_llm` command failed; the message names it and ends with its last output."""
