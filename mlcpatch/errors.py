"""The one base of every error a user can cause (bad input, missing files, refused settings).

The CLI prints a ``MlcpatchError`` as one line and exits with status 2; any other exception is
a bug in mlcpatch and keeps its traceback.
"""

from __future__ import annotations


class MlcpatchError(Exception):
    """Something the user can fix; the message says what and how."""
