"""One distribution, one package tree found by setuptools, and the build step that ships the
data folders kept at the top of the repo (setup.py). The built wheel itself: test_wheel.py."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import tomllib
from types import ModuleType

import pytest
from click.testing import CliRunner
from setuptools import find_packages
from setuptools.errors import FileError

from mlcpatch import resources
from mlcpatch.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _setup_py() -> ModuleType:
    """setup.py's functions (imported under another name, so setup() itself does not run)."""
    spec = importlib.util.spec_from_file_location("mlcpatch_setup_py", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_packages_are_found_not_listed_or_mapped() -> None:
    tool = _pyproject()["tool"]["setuptools"]
    assert "package-dir" not in tool
    assert set(tool["packages"]) == {"find"}, "packages must be found, not listed by hand"
    find = tool["packages"]["find"]
    assert find["namespaces"] is False
    found = set(find_packages(str(ROOT), include=find["include"]))
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "mlcpatch").rglob("__init__.py")
    }
    assert found == on_disk
    assert {p.split(".")[0] for p in found} == {"mlcpatch"}


def test_every_folder_of_python_code_is_a_package() -> None:
    """A folder of modules without __init__.py would silently miss the wheel."""
    folders = {p.parent for p in (ROOT / "mlcpatch").rglob("*.py") if "__pycache__" not in p.parts}
    assert [f for f in folders if not (f / "__init__.py").is_file()] == []


def test_top_level_data_folders_hold_no_code() -> None:
    """recipes/ holds only the per-arch TOMLs; training/ only what a person training links needs."""
    assert {p.suffix for p in (ROOT / "recipes").iterdir()} == {".toml"}
    assert {p.name for p in (ROOT / "training").iterdir()} <= {
        "README.md",
        "configs",
        "data",
        "links",
    }
    assert not list((ROOT / "training").rglob("*.py"))


def test_setup_py_ships_what_resources_looks_up() -> None:
    assert _setup_py().SHIPPED == resources.SHIPPED
    for name in resources.SHIPPED:
        # In a checkout there is no in-package copy: the lookup reads the checkout's folder.
        assert resources.data_path(name) == ROOT / name
    with pytest.raises(ValueError, match="not a shipped data folder"):
        resources.data_path("tests")


def _fake_root(tmp_path: pathlib.Path, installed: dict[str, str]) -> pathlib.Path:
    """A checkout with the SHIPPED folders; web/ locks two npm packages, ``installed`` says
    which are in node_modules and at what version."""
    root = tmp_path / "root"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "qwen2.toml").write_text('arch = "qwen2"\n')
    (root / "training" / "data").mkdir(parents=True)
    (root / "training" / "data" / "sample.jsonl").write_text("{}\n")
    web = root / "web"
    (web / "src").mkdir(parents=True)
    (web / "index.html").write_text("<html></html>")
    (web / "src" / "engine.js").write_text("export {};")
    (web / ".env").write_text("secret")
    lock = {
        "packages": {
            "": {"name": "page"},
            "node_modules/@scope/runtime": {"version": "1.0.0"},
            "node_modules/helper": {"version": "2.0.0"},
            # A devDependency (the browser benchmark's peers): never required, never shipped.
            "node_modules/bench-peer": {"version": "3.0.0", "dev": True},
        }
    }
    (web / "package-lock.json").write_text(json.dumps(lock))
    for name, version in installed.items():
        folder = web / "node_modules" / name
        (folder / "lib").mkdir(parents=True)
        (folder / "package.json").write_text(json.dumps({"version": version}))
        (folder / "lib" / "index.js").write_text(f"// {name}")
    stray = web / "node_modules" / "unlocked"
    stray.mkdir(parents=True)
    (stray / "package.json").write_text('{"version": "9"}')
    return root


def test_wheel_build_refuses_a_web_page_without_its_npm_packages(tmp_path: pathlib.Path) -> None:
    setup_py = _setup_py()
    root = _fake_root(tmp_path, {"@scope/runtime": "1.0.0", "helper": "1.9.0"})
    assert setup_py.missing_npm_packages(root / "web") == ["helper 2.0.0"]
    with pytest.raises(FileError, match=r"lacks the npm packages .*\(helper 2\.0\.0\): run `make"):
        setup_py.copy_shipped(root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wheel_build_copies_the_data_folders(tmp_path: pathlib.Path) -> None:
    setup_py = _setup_py()
    installed = {"@scope/runtime": "1.0.0", "helper": "2.0.0", "bench-peer": "3.0.0"}
    root = _fake_root(tmp_path, installed)
    out = tmp_path / "out"
    (out / "web").mkdir(parents=True)
    (out / "web" / "stale.js").write_text("from an earlier build")
    setup_py.copy_shipped(root, out)
    copied = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert copied == {
        "recipes/qwen2.toml",
        "training/data/sample.jsonl",
        "web/index.html",
        "web/package-lock.json",
        "web/src/engine.js",
        "web/node_modules/@scope/runtime/package.json",
        "web/node_modules/@scope/runtime/lib/index.js",
        "web/node_modules/helper/package.json",
        "web/node_modules/helper/lib/index.js",
    }


def test_apache_tvm_is_pinned_not_pypis_tvm() -> None:
    deps = _pyproject()["project"]["dependencies"]
    assert "apache-tvm==0.27.0.post1" in deps
    assert not [d for d in deps if d.split("=")[0].split(">")[0].strip() == "tvm"]


def test_cli_help_lists_the_commands() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in ("patch", "archs", "build", "serve", "train"):
        assert f"  {command} " in result.output
