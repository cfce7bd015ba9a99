"""The build's step cache and staging folders: damaged entries are misses, and what killed
builds leave behind is swept without touching a build that is still running."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from mlcpatch.build.artifact import staging_dir
from mlcpatch.build.pipeline import BuildOptions, build
from mlcpatch.build.staging import sweep_stale
from mlcpatch.build.step_cache import StepCache


def _cache_with_entry(tmp_path: pathlib.Path) -> tuple[StepCache, pathlib.Path]:
    source = tmp_path / "out.bin"
    source.write_bytes(b"compiled bytes" * 100)
    cache = StepCache("step", root=tmp_path / "cache")
    cache.store("k" * 64, {"lib": source})
    return cache, source


def test_a_stored_entry_lists_each_file_and_restores_it(tmp_path: pathlib.Path) -> None:
    cache, source = _cache_with_entry(tmp_path)
    marker = json.loads((cache.dir / ("k" * 64) / ".complete").read_text())
    assert marker == {
        "lib": {"size": 1400, "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}
    }
    assert cache.restore_file("k" * 64, "lib", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == source.read_bytes()


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"junk" * 350),  # same size, other bytes
        lambda p: p.write_bytes(b""),  # cut to zero
        lambda p: p.unlink(),
    ],
)
def test_a_damaged_entry_is_a_miss_and_is_dropped(
    tmp_path: pathlib.Path, damage: Callable[[pathlib.Path], object]
) -> None:
    cache, _ = _cache_with_entry(tmp_path)
    damage(cache.dir / ("k" * 64) / "lib")
    assert not cache.restore_file("k" * 64, "lib", tmp_path / "back.bin")
    assert cache.restore("k" * 64, tmp_path / "dest") is None
    assert not (tmp_path / "back.bin").exists()
    assert not (cache.dir / ("k" * 64)).exists()


def test_an_entry_from_before_the_file_list_is_a_miss(tmp_path: pathlib.Path) -> None:
    cache, _ = _cache_with_entry(tmp_path)
    (cache.dir / ("k" * 64) / ".complete").write_text("")  # the old, empty marker
    assert cache.restore("k" * 64, tmp_path / "dest") is None


@pytest.mark.heavy
def test_a_rebuild_after_cache_damage_rebuilds_the_step(
    tiny_hf: Callable[[str], pathlib.Path], tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLCPATCH_CACHE_DIR", str(tmp_path / "cache"))
    model = str(tiny_hf("qwen2-untied"))
    first = tmp_path / "first"
    build(BuildOptions(arch="qwen2", model=model, out=first, progress=False))
    (entry,) = (tmp_path / "cache" / "convert").iterdir()
    shard = entry / "params_shard_0.bin"
    shard.write_bytes(b"\0" * shard.stat().st_size)  # the cache rots; the size still fits
    second = tmp_path / "second"
    result = build(BuildOptions(arch="qwen2", model=model, out=second, progress=False))
    assert "convert" not in result.reused and "compile-llvm" in result.reused
    for name in ("params_shard_0.bin", "tensor-cache.json"):
        assert (second / name).read_bytes() == (first / name).read_bytes()


_HOLD = """
import pathlib, sys, time
from mlcpatch.build.artifact import staging_dir
with staging_dir(pathlib.Path(sys.argv[1]), False) as stage:
    (stage / "half-written.bin").write_bytes(b"x")
    print(stage, flush=True)
    time.sleep(600)
"""


def _hold_staging(out: pathlib.Path) -> tuple[subprocess.Popen, pathlib.Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, pathlib.Path(proc.stdout.readline().strip())


def test_staging_left_by_a_killed_build_is_swept_and_a_live_one_is_not(
    tmp_path: pathlib.Path,
) -> None:
    out = tmp_path / "art"
    killed, killed_stage = _hold_staging(out)
    live, live_stage = _hold_staging(tmp_path / "other")
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert killed_stage.is_dir() and live_stage.is_dir()
        (tmp_path / ".art.building-notours").mkdir()  # not our naming: never touched
        (tmp_path / ".other.building-1-abcdefgh").mkdir()  # another output's: not this sweep's
        with staging_dir(out, False) as stage:
            (stage / "f").write_text("done")
        assert not killed_stage.exists()
        assert live_stage.is_dir()
        assert (tmp_path / ".art.building-notours").is_dir()
        assert (tmp_path / ".other.building-1-abcdefgh").is_dir()
        assert (out / "f").read_text() == "done"
    finally:
        live.kill()
        live.wait()


def test_old_style_staging_is_swept_only_when_a_day_old(tmp_path: pathlib.Path) -> None:
    fresh = tmp_path / ".art.building-abcd1234"
    old = tmp_path / ".art.old-efgh5678"
    fresh.mkdir()
    old.mkdir()
    os.utime(old, (0, 0))
    assert sweep_stale(tmp_path, r"art\.(?:building|old)") == [old]
    assert fresh.is_dir() and not old.exists()
