"""Finding MLC-LLM, without importing it (importing loads its native library):

* the command is the ``mlc_llm`` executable on PATH, the way MLC-LLM's documentation runs it;
  when there is none but this interpreter can find the ``mlc_llm`` package, it is
  ``python -m mlc_llm`` with this interpreter;
* the package patched is the one that command runs: ``$MLCPATCH_MLC_LLM`` when set (as for
  ``mlcpatch patch``), else the one the executable's own Python finds (read from its ``#!`` line
  and asked with ``importlib.util.find_spec``, which does not import), else the one this
  interpreter finds.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mlcpatch.build.mlc.errors import MlcNotFoundError
from mlcpatch.patcher.resolve import MLC_ENV, mlc_override_dir, mlc_package_here

INSTALL_URL = "https://llm.mlc.ai/docs/install/mlc_llm"


@dataclasses.dataclass(frozen=True)
class MlcInstall:
    command: tuple[str, ...]  # ("/venv/bin/mlc_llm",) or (python, "-m", "mlc_llm")
    package_dir: Path  # the mlc_llm package folder (holds model/model.py)
    version: str
    found_by: str  # how the package was found, for messages and the manifest
    tvm_version: str | None = None  # MLC's own TVM (mlc-ai wheels), when its dist is found


def not_installed_message(detail: str = "") -> str:
    why = f" ({detail})" if detail else ""
    return (
        f"MLC-LLM is not installed{why}: no `mlc_llm` command on PATH and no mlc_llm package "
        f"for {sys.executable}; use the built-in compiler (--backend builtin), or install "
        f"MLC-LLM: pip install --pre -f https://mlc.ai/wheels mlc-llm-nightly-cpu "
        f"mlc-ai-nightly-cpu (see {INSTALL_URL})"
    )


_FIND_SPEC = (
    "import importlib.util as u\n"
    "s = u.find_spec('mlc_llm')\n"
    "print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')\n"
)
_PIP_SH_EXEC = re.compile(r"""^'''exec' (?:"([^"]+)"|(\S+))""")


def script_interpreter(script: Path) -> str | None:
    """The Python a console script runs with, from its ``#!`` line; None if it is not one."""
    try:
        with open(script, "rb") as handle:
            head = handle.read(2048).decode("utf-8", errors="replace")
    except OSError:
        return None
    if not head.startswith("#!"):
        return None
    lines = head.splitlines()
    words = shlex.split(lines[0][2:].strip()) if lines[0][2:].strip() else []
    if words and Path(words[0]).name in ("sh", "bash") and len(lines) > 1:
        # pip's form for long interpreter paths: #!/bin/sh + '''exec' "/path/python" "$0" "$@"
        match = _PIP_SH_EXEC.match(lines[1])
        words = [match.group(1) or match.group(2)] if match else []
    elif words and Path(words[0]).name == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        found = shutil.which(rest[0]) if rest else None
        words = [found] if found else []
    if not words or not Path(words[0]).name.startswith(("python", "pypy")):
        return None
    return words[0]


def _package_seen_by(python: str) -> Path | None:
    """Where ``python`` would import mlc_llm from, asked without importing it."""
    try:
        done = subprocess.run(
            [python, "-c", _FIND_SPEC], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.SubprocessError):
        return None
    location = done.stdout.strip()
    return Path(location) if done.returncode == 0 and location else None


def _dist_versions(package_dir: Path) -> tuple[str | None, str | None]:
    """(mlc-llm version, mlc-ai version) from the dist-info folders beside the package."""
    mlc_llm = mlc_ai = None
    try:
        dists = list(importlib.metadata.distributions(path=[str(package_dir.parent)]))
    except OSError:
        dists = []
    for dist in dists:
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("mlc-llm") and mlc_llm is None:
            mlc_llm = dist.version
        elif name.startswith("mlc-ai") and mlc_ai is None:
            mlc_ai = dist.version
    return mlc_llm, mlc_ai


def mlc_version(package_dir: Path) -> tuple[str, str | None]:
    """MLC-LLM's version (and its TVM's), read from metadata files, never by importing."""
    version, tvm = _dist_versions(package_dir)
    if version is not None:
        return version, tvm
    libinfo = package_dir / "libinfo.py"
    if libinfo.is_file():
        match = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", libinfo.read_text("utf-8"))
        if match:
            return f"{match.group(1)} (source tree)", tvm
    return "unknown", tvm


def find_mlc_llm() -> MlcInstall:
    """The command that runs MLC-LLM and the package it runs; MlcNotFoundError if none."""
    exe = shutil.which("mlc_llm")
    override = mlc_override_dir()
    if exe is not None:
        command: tuple[str, ...] = (exe,)
        python = script_interpreter(Path(exe))
        if override is not None:
            package, found_by = override, f"${MLC_ENV}"
        else:
            package = _package_seen_by(python) if python else None
            found_by = f"the Python of {exe} ({python})"
            if package is None:
                package, found_by = mlc_package_here(), f"this Python ({sys.executable})"
        if package is None:
            raise MlcNotFoundError(
                f"found the mlc_llm command ({exe}) but not the mlc_llm package it runs; set "
                f"{MLC_ENV} to the folder holding that package, or use --backend builtin"
            )
    else:
        here = mlc_package_here()
        if here is None:
            raise MlcNotFoundError(not_installed_message())
        command = (sys.executable, "-m", "mlc_llm")
        package, found_by = (
            (override, f"${MLC_ENV}") if override else (here, f"this Python ({sys.executable})")
        )
    if not (package / "model").is_dir():
        raise MlcNotFoundError(
            f"{package} does not look like the mlc_llm package (no model/ folder; found via "
            f"{found_by}); set {MLC_ENV} to the right folder, or use --backend builtin"
        )
    version, tvm = mlc_version(package)
    return MlcInstall(command, package, version, found_by, tvm)
