"""The build's user errors (the MLC-LLM backend has its own, ``mlc.errors``)."""

from __future__ import annotations

from mlcpatch.errors import MlcpatchError


class BuildError(MlcpatchError, RuntimeError):
    """A build that cannot proceed; the message is one line for the user."""


class BuildOptionError(MlcpatchError, ValueError):
    """A build option or recipe value (--target, --quant, a recipe key) this build does not
    know."""
