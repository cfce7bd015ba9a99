"""One build step pyproject.toml cannot express: the data folders kept outside the package.

recipes/*.toml, web/ (with the npm packages web/package-lock.json pins, which the page imports
from web/node_modules) and training/data/ stay at the top of the checkout, where people edit
them. A wheel only carries files inside its packages, so build_py copies these folders into
mlcpatch/_data/ of the wheel, where mlcpatch/resources.py looks first. Editable installs skip
the copy and read the checkout. Everything else about the project is in pyproject.toml.
"""

from __future__ import annotations

import json
import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.errors import FileError

ROOT = pathlib.Path(__file__).resolve().parent
# Folders relative to the checkout, copied to the same place under mlcpatch/_data/; must equal
# mlcpatch.resources.SHIPPED (tests/test_packaging.py checks).
SHIPPED = ("recipes", "web", "training/data")
NPM_HINT = "run `make system` (or `npm ci` in web/) before building the wheel"


def npm_packages(web: pathlib.Path) -> dict[str, str]:
    """Folder under web/ -> version, for every package of web/package-lock.json that the page
    imports: devDependencies (the browser benchmark's peers, e.g. wllama) stay out of the wheel."""
    lock = json.loads((web / "package-lock.json").read_text("utf-8"))
    return {
        path: info["version"]
        for path, info in lock["packages"].items()
        if path and not info.get("dev")
    }


def missing_npm_packages(web: pathlib.Path) -> list[str]:
    """``name version`` of each locked npm package not installed at its locked version."""
    missing = []
    for path, version in npm_packages(web).items():
        try:
            found = json.loads((web / path / "package.json").read_text("utf-8")).get("version")
        except (OSError, ValueError):
            found = None
        if found != version:
            missing.append(f"{path.removeprefix('node_modules/')} {version}")
    return missing


def _hidden(_folder: str, names: list[str]) -> list[str]:
    # Dotfiles are never served (mlcpatch serve refuses them), so they are not shipped either.
    return [n for n in names if n.startswith(".") or n == "__pycache__"]


def copy_shipped(root: pathlib.Path, dest: pathlib.Path) -> None:
    """Copy the SHIPPED folders of ``root`` to ``dest``; FileError (pip prints it as the
    build's error) when one is missing or web/node_modules lacks a locked npm package."""
    for name in SHIPPED:
        if not (root / name).is_dir():
            raise FileError(f"{root / name} is missing: build the wheel from a repository checkout")
    web = root / "web"
    missing = missing_npm_packages(web)
    if missing:
        raise FileError(
            f"{web / 'node_modules'} lacks the npm packages the web page imports "
            f"({', '.join(missing)}): {NPM_HINT}"
        )
    if dest.exists():  # a copy left by an earlier build in the same build folder
        shutil.rmtree(dest)

    def ignore(folder: str, names: list[str]) -> list[str]:
        # Only the locked npm packages ship (copied below), not whatever else node_modules holds.
        return _hidden(folder, names) + (["node_modules"] if pathlib.Path(folder) == web else [])

    for name in SHIPPED:
        shutil.copytree(root / name, dest / name, ignore=ignore)
    for path in npm_packages(web):
        shutil.copytree(web / path, dest / "web" / path, ignore=_hidden, dirs_exist_ok=True)


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:
            copy_shipped(ROOT, pathlib.Path(self.build_lib) / "mlcpatch" / "_data")


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its functions
    setup(cmdclass={"build_py": BuildPyWithData})
