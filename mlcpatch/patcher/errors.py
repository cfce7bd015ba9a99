"""The patcher's one error type: a single line that says what is wrong and where."""


class PatchError(Exception):
    """The file cannot be patched (or reverted) as asked; nothing was written."""
