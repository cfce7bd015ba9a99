"""The benchmark's own Python environment for llama.cpp (``llama-cpp-python``, built from source).

llama-cpp-python ships no binary wheel, so pip compiles llama.cpp with cmake (minutes on two
cores). That happens once, into a venv under ``<cache>/bench-peers/``, never in the project's own
environment and never in the tests. The venv is built in its final folder (venv scripts record
their path) and counts only once its ``.complete`` marker is written, after the build and an
import check succeeded; a failed build removes the folder, an interrupted one is redone.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import venv

from mlcpatch.build.step_cache import cache_root
from mlcpatch.errors import MlcpatchError

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# cmake and ninja from PyPI, on the build's PATH, so a machine without them still builds (seen
# here: the venv's ninja ran the build; pip's isolated build env may still fetch its own cmake).
BUILD_TOOLS = ("cmake==4.4.4", "ninja==1.13.2")


class PeerEnvError(MlcpatchError, RuntimeError):
    """The llama.cpp environment could not be made."""


def env_folder() -> pathlib.Path:
    version = LLAMA_CPP_PYTHON.split("==")[1]
    return cache_root() / "bench-peers" / f"llama-cpp-python-{version}"


def env_python(folder: pathlib.Path | None = None) -> pathlib.Path:
    return (folder or env_folder()) / "bin" / "python"


def _run(cmd: list[str], log: pathlib.Path, env: dict[str, str] | None = None) -> None:
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        raise PeerEnvError(
            f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}); log: {log}\n"
            + "\n".join(tail)
        )


def ensure_llama_env(jobs: int | None = None, quiet: bool = False) -> pathlib.Path:
    """The venv's python, building llama-cpp-python into it first if it is not there yet."""
    folder = env_folder()
    python = env_python(folder)
    if (folder / ".complete").is_file() and python.is_file():
        return python
    folder.parent.mkdir(parents=True, exist_ok=True)
    log = folder.parent / f"{folder.name}.build.log"
    log.write_text("")
    if not quiet:
        print(
            f"building {LLAMA_CPP_PYTHON} from source into {folder} (once; several minutes; "
            f"log: {log})",
            file=sys.stderr,
        )
    try:
        shutil.rmtree(folder, ignore_errors=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(folder)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "--quiet", *BUILD_TOOLS], log)
        env = dict(os.environ)
        env["PATH"] = f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs or os.cpu_count() or 1)
        # CPU only, tuned for this machine (like our llvm build for the host CPU).
        env.setdefault("CMAKE_ARGS", "-DGGML_NATIVE=ON -DLLAMA_CURL=OFF")
        _run([*pip, "install", "--no-cache-dir", "--verbose", LLAMA_CPP_PYTHON], log, env)
        _run([str(python), "-c", "import llama_cpp; print(llama_cpp.__version__)"], log)
        (folder / ".complete").write_text(LLAMA_CPP_PYTHON + "\n")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return python


if __name__ == "__main__":
    print(ensure_llama_env())
