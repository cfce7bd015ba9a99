"""The peer benchmark's own parts: bandwidth, limits, reports, argument errors, and the two legs
that run here (ours and transformers) on a tiny random model. The llama.cpp leg needs the
benchmark's source build of llama-cpp-python and is never run by the tests."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import matplotlib.image
import pytest

from mlcpatch.errors import MlcpatchError
from mlcpatch.peers.bandwidth import BandwidthError, decode_limit_tok_s, measure_bandwidth
from mlcpatch.peers.main import PeerBenchError, run_benchmark
from mlcpatch.peers.report import ReportError, table, write_json, write_png


def _leg(engine: str, decode: float, limit: float) -> dict:
    return {
        "engine": engine,
        "prefill_tok_s": 100.0,
        "decode_tok_s": decode,
        "decode_limit_tok_s": limit,
        "peak_rss_mib": 512.0,
        "load_s": 1.5,
    }


RESULTS = {"legs": [_leg("ours (q0f32)", 30.0, 40.0), _leg("peer", 10.0, 40.0)]}


def test_bandwidth_is_positive_and_in_a_plausible_range() -> None:
    bw = measure_bandwidth(threads=2, size_mib=64, passes=2)
    # GB/s, so a unit slip (bytes/s, or per MiB) lands far outside these bounds.
    for key in ("read_gb_s", "copy_gb_s"):
        assert 0.1 < bw[key] < 10_000, bw
    assert bw["threads"] == 2 and bw["array_mib"] == 64


@pytest.mark.parametrize("kwargs", [{"threads": 0}, {"threads": 1, "size_mib": 0}])
def test_bandwidth_rejects_bad_settings(kwargs: dict) -> None:
    with pytest.raises(BandwidthError):
        measure_bandwidth(**kwargs)


def test_decode_limit_is_bandwidth_over_weight_bytes() -> None:
    # 10 GB/s over 500 MB of weights: 20 full reads per second.
    assert decode_limit_tok_s(500_000_000, 10.0) == pytest.approx(20.0)
    with pytest.raises(MlcpatchError, match="weight_bytes"):
        decode_limit_tok_s(0, 10.0)


def test_json_report_round_trips_and_leaves_no_temp_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "out" / "peers.json"
    write_json(path, RESULTS)
    assert json.loads(path.read_text()) == RESULTS
    assert [p.name for p in path.parent.iterdir()] == ["peers.json"]


def test_png_report_is_an_image(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "peers.png"
    write_png(path, RESULTS, "title")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 2 * height > 0  # one row of four panels
    assert [p.name for p in tmp_path.iterdir()] == ["peers.png"]


def test_table_shows_each_leg_its_share_of_the_limit_and_failures() -> None:
    failed = {"engine": "llama.cpp (GGUF)", "error": "exit 1: no compiler"}
    text = table({"legs": [*RESULTS["legs"], failed]})
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[1].startswith("ours (q0f32)") and "75%" in lines[1]
    assert lines[2].startswith("peer") and "25%" in lines[2]
    assert "no compiler" in lines[3]


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ({"legs": []}, "no engine results"),
        ({"legs": [{"engine": "x", "prefill_tok_s": 1.0}]}, "missing decode_tok_s"),
    ],
)
def test_reports_refuse_incomplete_results(
    results: dict, message: str, tmp_path: pathlib.Path
) -> None:
    with pytest.raises(ReportError, match=message):
        write_json(tmp_path / "x.json", results)
    assert not (tmp_path / "x.json").exists()


def test_png_refuses_when_every_leg_failed(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ReportError, match="nothing to draw"):
        write_png(tmp_path / "x.png", {"legs": [{"engine": "a", "error": "boom"}]}, "t")


def _args(tmp_path: pathlib.Path, **changes: object) -> dict:
    args = {
        "artifacts": [],
        "hf_model": None,
        "gguf": None,
        "engines": ("ours",),
        "threads": 2,
        "prompt": "hi",
        "decode_tokens": 4,
        "repeats": 1,
    }
    args.update(changes)
    return args


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threads": 0}, "--threads must be at least 1"),
        ({"decode_tokens": 0}, "--decode-tokens"),
        ({"engines": ("ours", "vllm")}, "unknown engine"),
        ({"engines": ("ours",)}, "needs at least one artifact"),
        ({"engines": ("transformers",)}, "needs an HF model folder"),
        ({"engines": ("llama.cpp",)}, "needs a GGUF file"),
    ],
)
def test_benchmark_argument_errors(tmp_path: pathlib.Path, changes: dict, message: str) -> None:
    with pytest.raises(PeerBenchError, match=message):
        run_benchmark(**_args(tmp_path, **changes))


def test_a_folder_that_is_no_artifact_is_named_with_the_build_command(
    tmp_path: pathlib.Path,
) -> None:
    with pytest.raises(PeerBenchError, match=r"not an artifact folder.*--target llvm"):
        run_benchmark(**_args(tmp_path, artifacts=[tmp_path]))


def test_cli_reports_user_errors_in_one_line(tmp_path: pathlib.Path) -> None:
    cmd = [sys.executable, "-m", "mlcpatch.peers", "--engines", "ours", "--artifact", "nowhere"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("Error: nowhere: not an artifact folder")
    assert "Traceback" not in done.stderr


def test_ours_and_transformers_legs_on_a_tiny_model(built, tiny_hf) -> None:
    """Both legs run in their own processes and agree on the greedy tokens and weight bytes."""
    variant = "llama-tied-llama3"
    results = run_benchmark(
        artifacts=[built(variant)],
        hf_model=tiny_hf(variant),
        gguf=None,
        engines=("ours", "transformers"),
        threads=1,
        prompt="What is two plus three?",
        decode_tokens=6,
        repeats=2,
        bandwidth_mib=16,
    )
    ours, peer = results["legs"]
    assert "error" not in ours and "error" not in peer, results["legs"]
    assert ours["engine"] == "ours (q0f32)"
    assert peer["engine"].startswith("transformers")
    for leg in (ours, peer):
        assert leg["prompt_tokens"] == len(results["prompt_ids"]) > 5
        assert len(leg["output_ids"]) == 7  # the prefill's token, then 6 decode steps
        assert leg["peak_rss_mib"] >= leg["base_rss_mib"] > 0
        assert leg["threads"] == 1
    # Same f32 weights: the same greedy tokens, and the same bytes counted by each engine.
    assert ours["output_ids"] == peer["output_ids"]
    assert ours["tokens_matching_transformers"] == 7
    assert ours["weight_bytes"] == peer["weight_bytes"]


def test_browser_bench_reports_a_missing_wasm_library_as_not_built() -> None:
    """No browser starts: the leg is decided from the artifact's model_lib alone."""
    import argparse

    from browser_peers_bench import one_leg

    args = argparse.Namespace(
        libraries={"llvm": "m-cpu.so", "webgpu": "m-webgpu.wasm"}, web_root=pathlib.Path("web")
    )
    result = one_leg("ours-wasm", "http://127.0.0.1:1/", "/artifacts/m/", "text", args)
    assert result["engine"] == "ours (wasm CPU)"
    assert result["skipped"].startswith("not built")
    assert "llvm, webgpu" in result["skipped"] and "--target wasm" in result["skipped"]


def test_browser_bench_reports_wllama_missing_from_node_modules(tmp_path: pathlib.Path) -> None:
    import argparse

    from browser_peers_bench import one_leg

    args = argparse.Namespace(libraries={"llvm": "m-cpu.so"}, web_root=tmp_path)
    result = one_leg("wllama", "http://127.0.0.1:1/", "/artifacts/m/", "text", args)
    assert result["skipped"].startswith("not installed: run `npm ci`")


def test_browser_bench_stages_the_artifact_and_the_gguf_in_one_served_folder(
    tmp_path: pathlib.Path,
) -> None:
    from browser_peers_bench import GGUF_NAME, stage

    artifact = tmp_path / "src" / "model-q4f32_1"
    (artifact / "source").mkdir(parents=True)
    (artifact / "mlc-chat-config.json").write_text("{}")
    (artifact / "source" / "model.py").write_text("# definition")
    gguf = tmp_path / "weights.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(16)))
    root = tmp_path / "served"
    root.mkdir()
    folder = stage(artifact, gguf, root)
    assert folder == root / "model-q4f32_1"
    assert (folder / "mlc-chat-config.json").read_text() == "{}"
    assert (folder / "source" / "model.py").read_text() == "# definition"
    assert (folder / GGUF_NAME).read_bytes() == gguf.read_bytes()
    assert sorted(p.name for p in artifact.iterdir()) == ["mlc-chat-config.json", "source"]
