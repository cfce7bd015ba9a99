"""A fake MLC-LLM installation: a real virtual environment holding a fake ``mlc_llm`` package
(MLC-style model registry + a Qwen2-like model file from tests/fixtures) and the ``mlc_llm``
console script pip would write, whose program is tests/fakes/mlc_llm_cli.py.

The package refuses to be imported by anything but its own command (``mlc_llm`` or
``python -m mlc_llm``), so a test fails if mlcpatch imports it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import stat
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "mlc_models"

_INIT = '''"""Fake MLC-LLM (tests): only its own command may import it."""

import sys
from pathlib import Path

if Path(sys.argv[0]).name not in ("mlc_llm", "-m"):
    raise ImportError(f"fake mlc_llm imported by {sys.argv[0]}: mlcpatch must never import it")
'''

_REGISTRY = '''"""Fake MLC-LLM model registry, shaped like mlc_llm/model/model.py."""

from .qwen2 import qwen2_model

MODELS = {
    "qwen2": Model(
        name="qwen2",
        model=qwen2_model.Qwen2LikeLMHeadModel,
        config=qwen2_model.Qwen2LikeConfig,
    ),
}
'''

# What pip writes for a console_scripts entry point.
_CONSOLE_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from mlc_llm.__main__ import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


@dataclasses.dataclass
class FakeMlc:
    root: Path  # the virtual environment
    bin_dir: Path
    site: Path  # its site-packages
    package: Path  # site/mlc_llm
    model_file: Path  # package/model/qwen2/qwen2_model.py
    log: Path
    version: str

    @property
    def executable(self) -> Path:
        return self.bin_dir / "mlc_llm"

    def calls(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def backups(self) -> list[str]:
        return sorted(p.name for p in self.model_file.parent.iterdir() if "mlcpatch-bak" in p.name)

    def add_emcc(self) -> None:
        emcc = self.bin_dir / "emcc"
        emcc.write_text("#!/bin/sh\necho 'emcc (fake) 3.1.6'\n")
        emcc.chmod(emcc.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install_fake_mlc(
    root: Path, version: str = "0.20.0", *, console_script: bool = True, dist_info: bool = True
) -> FakeMlc:
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    package = site / "mlc_llm"
    (package / "model" / "qwen2").mkdir(parents=True)
    (package / "__init__.py").write_text(_INIT)
    shutil.copyfile(HERE / "mlc_llm_cli.py", package / "__main__.py")
    (package / "libinfo.py").write_text('__version__ = "0.1.dev0"\n')
    (package / "fake_version.txt").write_text(version + "\n")
    (package / "model" / "__init__.py").write_text("")
    (package / "model" / "model.py").write_text(_REGISTRY)
    (package / "model" / "qwen2" / "__init__.py").write_text("")
    model_file = package / "model" / "qwen2" / "qwen2_model.py"
    shutil.copyfile(FIXTURES / "qwen2_untied.py", model_file)
    if dist_info:
        for dist, top in (("mlc_llm_nightly_cpu", "mlc_llm"), ("mlc_ai_nightly_cpu", "tvm")):
            info = site / f"{dist}-{version}.dist-info"
            info.mkdir()
            name = dist.replace("_", "-")
            text = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            (info / "METADATA").write_text(text)
            (info / "top_level.txt").write_text(top + "\n")
    bin_dir = root / "bin"
    if console_script:
        script = bin_dir / "mlc_llm"
        script.write_text(_CONSOLE_SCRIPT.format(python=bin_dir / "python"))
        script.chmod(0o755)
    log = root / "calls.jsonl"
    return FakeMlc(root, bin_dir, site, package, model_file, log, version)


def clean_env(**changes: str | None) -> dict[str, str]:
    """os.environ without anything that would point mlcpatch at another MLC-LLM, plus changes."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLCPATCH_MLC_LLM", "PYTHONPATH")}
    env.pop("MLC_LLM_SOURCE_DIR", None)
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
