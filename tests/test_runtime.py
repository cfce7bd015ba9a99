"""The Python runtime's verbs, sampler and CLI commands on a tiny q0f32 build."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from mlcpatch.cli import main
from mlcpatch.runtime import ArtifactError, Runtime, sample

pytestmark = pytest.mark.heavy


@pytest.fixture(scope="module")
def artifact(built: Callable[..., pathlib.Path]) -> pathlib.Path:
    return built("qwen2-untied")


@pytest.fixture(scope="module")
def rt(artifact: pathlib.Path) -> Runtime:
    return Runtime(artifact)


def test_generate_cli_json_is_greedy_and_deterministic(artifact: pathlib.Path, rt: Runtime) -> None:
    args = ["generate", str(artifact), "--prompt", "Hello", "--max-new-tokens", "6", "--greedy"]
    first = CliRunner().invoke(main, [*args, "--json"])
    assert first.exit_code == 0, first.output
    payload = json.loads(first.output.strip().splitlines()[-1])
    assert set(payload) == {"prompt_ids", "output_ids", "text"}
    assert payload["prompt_ids"] == rt.encode_chat("Hello")
    expected = rt.generate("Hello", max_new_tokens=6, greedy=True)
    assert payload["output_ids"] == expected.output_ids
    assert payload["text"] == expected.text
    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0 and plain.output.strip() == expected.text.strip()


def test_hidden_cli_writes_get_last_hidden(
    artifact: pathlib.Path, rt: Runtime, tmp_path: pathlib.Path
) -> None:
    out = tmp_path / "h.npy"
    result = CliRunner().invoke(
        main, ["hidden", str(artifact), "--prompt", "Hi", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    rt.reset()
    ids = rt.encode_chat("Hi")
    assert saved.dtype == np.float32 and saved.shape == (len(ids), rt.hidden_size)
    np.testing.assert_array_equal(saved, rt.get_last_hidden(rt.embed(ids)))


def test_chat_template_is_applied(rt: Runtime) -> None:
    text = rt.tokenizer.decode(rt.encode_chat("Hi there"))
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"


def test_reset_restarts_the_sequence(rt: Runtime) -> None:
    ids = rt.encode_chat("Hi")
    rt.reset()
    first = rt.prefill(rt.embed(ids))
    rt.decode(rt.embed([3]))
    assert rt.position == len(ids) + 1
    rt.reset()
    assert rt.position == 0
    np.testing.assert_array_equal(rt.prefill(rt.embed(ids)), first)


def test_context_window_is_enforced(artifact: pathlib.Path) -> None:
    small = Runtime(artifact, context_window_size=8, verify=False)
    small.prefill(small.embed(list(range(1, 9))))
    with pytest.raises(ArtifactError, match="beyond the context window"):
        small.decode(small.embed([1]))


def test_bad_inputs(rt: Runtime) -> None:
    with pytest.raises(ValueError, match="token ids"):
        rt.embed([rt.vocab_size])
    with pytest.raises(ValueError, match="expected embeddings"):
        rt.prefill(np.zeros((3, rt.hidden_size + 1), np.float32))
    with pytest.raises(ValueError, match="expected one embedding"):
        rt.decode(np.zeros((2, rt.hidden_size), np.float32))


def test_stop_token_ends_generation(rt: Runtime) -> None:
    free = rt.generate(prompt_ids=[1, 2, 3], max_new_tokens=8, greedy=True, stop_token_ids=[])
    stop = free.output_ids[2]
    stopped = rt.generate(
        prompt_ids=[1, 2, 3], max_new_tokens=8, greedy=True, stop_token_ids=[stop]
    )
    assert stopped.output_ids == free.output_ids[: free.output_ids.index(stop) + 1]
    assert stopped.stopped_by == "stop token"


def test_sampling_is_seeded_and_respects_top_p() -> None:
    logits = np.array([5.0, 4.0, 0.0, -1.0], np.float32)
    draws = {sample(logits, 1.0, 0.5, False, np.random.default_rng(s)) for s in range(50)}
    assert draws == {0}  # token 0 alone holds > 50% of the mass
    draws = {sample(logits, 1.0, 0.99, False, np.random.default_rng(s)) for s in range(200)}
    assert draws >= {0, 1}
    assert sample(logits, 1.0, 1.0, True, np.random.default_rng(0)) == 0
    a = [sample(logits, 2.0, 1.0, False, np.random.default_rng(7)) for _ in range(3)]
    b = [sample(logits, 2.0, 1.0, False, np.random.default_rng(7)) for _ in range(3)]
    assert a == b


def test_pytorch_bin_checkpoint_builds_the_same_model(
    tmp_path: pathlib.Path, tiny_hf: Callable[[str], pathlib.Path], rt: Runtime
) -> None:
    """A pytorch_model.bin checkpoint converts to the same shards as its safetensors twin."""
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.tiny import write_tiny_model

    folder = write_tiny_model(tmp_path / "bin", "qwen2", seed=1, safe_serialization=False)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    out = build(BuildOptions(arch="qwen2", model=str(folder), out=tmp_path / "a", progress=False))
    reference = (rt.folder / "params_shard_0.bin").read_bytes()
    assert (out.out / "params_shard_0.bin").read_bytes() == reference


def test_demo_flow_tiny_random_without_download(tmp_path: pathlib.Path) -> None:
    """What `make demo` runs: build the built-in tiny model, then generate from it."""
    out = tmp_path / "tiny-qwen2"
    runner = CliRunner()
    built = runner.invoke(
        main, ["build", "--arch", "qwen2", "--model", "tiny-random", "--out", str(out), "-q"]
    )
    assert built.exit_code == 0, built.output
    assert (out / "tiny-qwen2-cpu.so").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "tiny"
    args = ["generate", str(out), "--prompt", "Hello", "--max-new-tokens", "8", "--json"]
    result = runner.invoke(main, [*args, "--seed", "3"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    assert 1 <= len(payload["output_ids"]) <= 8
    again = runner.invoke(main, [*args, "--seed", "3"])
    assert json.loads(again.output.strip().splitlines()[-1]) == payload  # seeded sampling
