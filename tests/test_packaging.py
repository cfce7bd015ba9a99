"""One distribution, one top-level import name, and every subpackage actually shipped."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from click.testing import CliRunner

from mlcpatch.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_python_package_folder_is_listed() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    mapping: dict[str, str] = tool["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "fixtures" in init.parts or "node_modules" in init.parts:
                continue
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found == set(tool["packages"])


def test_wheel_installs_only_the_mlcpatch_namespace(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp_path.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mlcpatch"}
    # recipes/ and training/ ship under the namespace, never as generic top-level modules.
    assert "mlcpatch/recipes/__init__.py" in names
    assert "mlcpatch/training/__init__.py" in names


def test_apache_tvm_is_pinned_not_pypis_tvm() -> None:
    deps = _pyproject()["project"]["dependencies"]
    assert "apache-tvm==0.27.0.post1" in deps
    assert not [d for d in deps if d.split("=")[0].split(">")[0].strip() == "tvm"]


def test_cli_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("patch", "archs"):
        assert f"  {command} " in result.output
