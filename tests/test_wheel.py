"""The wheel, built from this checkout and installed into a fresh venv outside it: it holds only
the mlcpatch package with its data, and the installed `mlcpatch` serves the page, lists every
command and builds for the CPU without the checkout.

The new venv sees the runtime dependencies (click, numpy, tvm, ...) through a .pth file naming
this interpreter's site-packages folders, so nothing is downloaded. Lines of a .pth file only
join sys.path; the .pth files inside those folders are not run, so this checkout's editable
install (a .pth + import hook) does not leak into the new venv: mlcpatch is imported from the
wheel's copy, which the tests check.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (ROOT / "recipes").glob("*.toml"))


def _clean_copy(dest: pathlib.Path) -> pathlib.Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) copied to ``dest``.

    setuptools reuses a checkout's build/ and *.egg-info folders; a stale one from an older
    layout would leak old modules into the wheel, so the wheel is built from this copy.
    npm packages are ignored by git: web/node_modules is linked in (build_py copies through it).
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # deleted-but-tracked files are listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    (dest / "web" / "node_modules").symlink_to(ROOT / "web" / "node_modules")
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("wheel")
    source = _clean_copy(tmp_path_factory.mktemp("checkout"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(out), str(source)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return next(out.glob("*.whl"))


def _env() -> dict[str, str]:
    """The environment without anything that would put the checkout on sys.path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def venv(wheel: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A fresh venv in a temporary folder with the wheel installed; the venv's folder."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = str(root / "bin" / "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    assert ours, sys.path
    (pathlib.Path(purelib) / "zz_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    # --ignore-installed: this checkout's editable install is visible through the .pth as the
    # same version, and must be neither taken as already there nor uninstalled.
    done = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q"]
        + [str(wheel)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=root.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def _site_packages(venv: pathlib.Path) -> pathlib.Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def test_wheel_holds_the_mlcpatch_package_and_its_data(wheel: pathlib.Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"mlcpatch"}
    code = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "mlcpatch").rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert code - names == set()
    assert not [n for n in names if n.startswith(("mlcpatch/recipes/", "mlcpatch/browser"))]
    web = ROOT / "web"
    page = {
        "mlcpatch/_data/web/" + p.relative_to(web).as_posix()
        for p in web.rglob("*")
        if p.is_file() and "node_modules" not in p.relative_to(web).parts
    }
    data = {
        *(f"mlcpatch/_data/recipes/{name}" for name in RECIPES),
        "mlcpatch/_data/training/data/sample.jsonl",
        "mlcpatch/_data/web/node_modules/@mlc-ai/web-runtime/lib/index.js",
        "mlcpatch/_data/web/node_modules/@mlc-ai/web-tokenizers/lib/index.js",
        "mlcpatch/build/webgpu/toolchain_headers/include/tvm/support/io.h",
        "mlcpatch/build/wasm/threads.c",
        "mlcpatch/loop/patterns/sequential.toml",
        "mlcpatch/loop/data/calibration.txt",
    }
    assert page and (page | data) - names == set()


def test_installed_mlcpatch_comes_from_the_wheel(venv: pathlib.Path) -> None:
    code = (
        "import json, mlcpatch, mlcpatch.resources as r; from mlcpatch.models.registry import "
        "get_arch; print(json.dumps([mlcpatch.__file__, str(r.web_dir()), str(r.recipes_dir()), "
        "get_arch('llama').default_conv_template]))"
    )
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=venv.parent,
    )
    assert done.returncode == 0, done.stderr
    module, web, recipes, template = json.loads(done.stdout)
    package = _site_packages(venv) / "mlcpatch"
    assert pathlib.Path(module) == package / "__init__.py"
    assert pathlib.Path(web) == package / "_data" / "web"
    assert pathlib.Path(recipes) == package / "_data" / "recipes"
    assert template == "chatml"  # read from the wheel's copy of recipes/llama.toml


def test_installed_cli_lists_every_command(venv: pathlib.Path) -> None:
    done = subprocess.run(
        [str(venv / "bin" / "mlcpatch"), "--help"], capture_output=True, text=True, env=_env()
    )
    assert done.returncode == 0, done.stderr
    for command in ("build", "generate", "patch", "run", "serve", "train"):
        assert f"  {command} " in done.stdout


def _first_line(proc: subprocess.Popen[str], seconds: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    assert ready, f"mlcpatch serve printed nothing in {seconds:.0f} s"
    return proc.stdout.readline()


def test_installed_serve_serves_the_repos_page(venv: pathlib.Path, tmp_path: pathlib.Path) -> None:
    (tmp_path / "artifacts").mkdir()
    proc = subprocess.Popen(
        [str(venv / "bin" / "mlcpatch"), "serve", "--port", "0", "--quiet"]
        + ["--artifacts", str(tmp_path / "artifacts")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    try:
        line = _first_line(proc, 120)
        found = re.search(r"^Serving (\S+) .* at (http://127\.0\.0\.1:\d+/) ", line)
        assert found, line
        assert pathlib.Path(found[1]) == _site_packages(venv) / "mlcpatch" / "_data" / "web"
        for path in (
            "playground.html",
            "src/engine.js",
            "node_modules/@mlc-ai/web-runtime/lib/index.js",
        ):
            with urllib.request.urlopen(found[2] + path, timeout=30) as response:
                assert response.status == 200
                assert response.read() == (ROOT / "web" / path).read_bytes(), path
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    assert "warning" not in proc.stderr.read()  # no missing page file or npm package


@pytest.mark.heavy
def test_installed_patch_and_build_run_and_name_what_webgpu_needs(
    venv: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """The patcher and a CPU build from the wheel alone; a WebGPU build without emscripten
    says, in one line, what to install and run."""
    mlcpatch = str(venv / "bin" / "mlcpatch")
    env = {**_env(), "MLCPATCH_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [mlcpatch, "patch", "qwen2", "--source", "builtin", "--diff"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "+    def get_last_hidden(" in done.stdout
    start = time.perf_counter()
    done = subprocess.run(
        [mlcpatch, "build", "--arch", "qwen2", "--model", "tiny-random", "--target", "llvm"]
        + ["--out", str(tmp_path / "tiny"), "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "tiny" / "manifest.json").read_text())
    assert manifest["libraries"] == {"llvm": "tiny-cpu.so"}
    assert (tmp_path / "tiny" / "source").is_dir()
    print(f"CPU build from the wheel: {time.perf_counter() - start:.1f} s")

    no_emcc = tmp_path / "empty-bin"
    no_emcc.mkdir()
    done = subprocess.run(
        [mlcpatch, "build", "--arch", "qwen2", "--model", "tiny-random", "--target", "webgpu"]
        + ["--out", str(tmp_path / "tiny-web"), "--quiet"],
        capture_output=True,
        text=True,
        env={**env, "PATH": str(no_emcc), "MLCPATCH_TOOLCHAIN_DIR": str(tmp_path / "tc")},
        cwd=tmp_path,
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, done.stderr
    assert "emcc (emscripten) not found" in errors[0]
    assert "python -m mlcpatch.build.webgpu.toolchain" in errors[0]
    assert not (tmp_path / "tiny-web").exists()
