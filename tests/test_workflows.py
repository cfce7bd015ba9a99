"""The GitHub Actions workflows pass actionlint, and actionlint does catch a broken workflow."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BUILD_MODEL = WORKFLOWS / "build-model.yml"


def _actionlint() -> str:
    # The test extra installs it into the virtualenv, whose bin/ may not be on PATH.
    beside_python = pathlib.Path(sys.executable).parent / "actionlint"
    found = str(beside_python) if beside_python.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint not found: install the test extra (pip install -e '.[test]')")
    return found


def _lint(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_actionlint(), "-no-color", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.parametrize("name", ["ci.yml", "build-model.yml"])
def test_workflow_passes_actionlint(name: str) -> None:
    result = _lint(WORKFLOWS / name)
    assert result.returncode == 0, result.stdout + result.stderr


BREAKAGES = {
    "unknown input": (
        "${{ matrix.arch }}-${{ matrix.quantization }}-${{ strategy.job-index }}",
        "${{ inputs.no_such_input }}",
    ),
    "unknown job in needs": ("needs: matrix", "needs: no-such-job"),
    "bad runner key": (
        "    runs-on: ubuntu-latest\n    timeout-minutes",
        "    run-on: x\n    timeout-minutes",
    ),
    "broken YAML": ("on:\n  workflow_dispatch:", "on:\n  workflow_dispatch: ["),
    "shell bug": ('"${args[@]}"', "${args[@]}"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_actionlint_rejects_a_broken_copy(breakage: str, tmp_path: pathlib.Path) -> None:
    if breakage == "shell bug":
        # actionlint checks run: scripts only through shellcheck (`make system` installs it).
        assert shutil.which("shellcheck"), "shellcheck is not installed: run `make system`"
    old, new = BREAKAGES[breakage]
    text = BUILD_MODEL.read_text()
    assert old in text, f"the workflow changed: update the {breakage!r} breakage"
    broken = tmp_path / ".github" / "workflows" / "build-model.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace(old, new, 1))
    result = _lint(broken)
    assert result.returncode != 0, f"actionlint accepted a workflow with a {breakage}"
    assert "build-model.yml" in result.stdout


def test_build_model_workflow_does_what_the_issue_asks() -> None:
    workflow = yaml.safe_load(BUILD_MODEL.read_text())
    trigger = workflow[True]  # YAML 1.1 reads the key "on" as a boolean
    assert set(trigger) == {"workflow_dispatch"}
    assert {"arch", "model", "quantization"} <= set(trigger["workflow_dispatch"]["inputs"])
    build = workflow["jobs"]["build"]
    assert "fromJSON(needs.matrix.outputs.include)" in build["strategy"]["matrix"]["include"]
    steps = {step.get("name", step.get("uses")): step for step in build["steps"]}
    cache = next(s for s in build["steps"] if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/mlcpatch"
    assert "TARGET=llvm,webgpu" in steps["Build"]["run"]
    assert 'make build ARCH="$ARCH" MODEL="$MODEL" QUANT="$QUANT"' in steps["Build"]["run"]
    publish = steps["Publish"]
    assert publish["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert publish["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert "mlcpatch publish" in publish["run"]
    assert workflow["permissions"] == {"contents": "write"}
