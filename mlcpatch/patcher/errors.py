"""The patcher's one error type: a single line that says what is wrong and where."""

from mlcpatch.errors import MlcpatchError


class PatchError(MlcpatchError):
    """The file cannot be patched (or reverted) as asked; nothing was written."""
