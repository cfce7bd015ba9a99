"""The latent loop in Python on tiny compiled models: every pattern, both modes, both backends."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from mlcpatch.cli import main
from mlcpatch.links.files import save_links
from mlcpatch.links.linkfile import LinkFileError
from mlcpatch.loop.backends import TorchBackend, open_backend
from mlcpatch.loop.calibrate import fitted_links
from mlcpatch.loop.orchestrator import Agent, Links, Settings, run
from mlcpatch.loop.patterns import PatternError, builtin_patterns, load_pattern
from mlcpatch.runtime import Runtime

QUESTION = "What is 3 + 4 * 2?"
SETTINGS = Settings(rounds=2, latent_steps=3, max_new_tokens=6, text_tokens=5)


@pytest.fixture(scope="module")
def qwen(built: Callable[..., pathlib.Path]) -> Runtime:
    return open_backend(str(built("qwen2-untied")))


@pytest.fixture(scope="module")
def narrow_llama(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A second, different model (hidden 48 instead of 64) for heterogeneous agents."""
    from mlcpatch.build.pipeline import BuildOptions, build
    from mlcpatch.build.tiny import write_tiny_model

    hf = write_tiny_model(
        tmp_path_factory.mktemp("hf-narrow"),
        "llama",
        seed=3,
        config_overrides={"hidden_size": 48, "intermediate_size": 96},
    )
    out = tmp_path_factory.mktemp("artifacts") / "narrow-llama"
    build(BuildOptions(arch="llama", model=str(hf), quantization="q0f32", out=out, progress=False))
    return out


def _system(name: str, backend) -> tuple:
    pattern = load_pattern(name)
    return pattern, [Agent(role, backend) for role in pattern.agents]


@pytest.mark.parametrize("name", ["sequential", "mixture", "distillation", "deliberation"])
def test_every_pattern_runs_in_both_modes_and_metrics_add_up(qwen: Runtime, name: str) -> None:
    pattern, agents = _system(name, qwen)
    links = fitted_links(pattern, agents)
    latent = run("latent", pattern, agents, QUESTION, SETTINGS, links)
    text = run("text", pattern, agents, QUESTION, SETTINGS)
    n = len(pattern.agents)
    for result in (latent, text):
        assert len(result.steps) == SETTINGS.rounds * n
        assert [s.agent for s in result.steps] == [a.name for a in pattern.agents] * 2
        rows = result.per_round()
        for key in ("tokens_generated", "positions_processed", "latent_steps", "bytes_handed"):
            assert sum(r[key] for r in rows) == result.total(key)
        final = result.steps[-1]
        assert 1 <= final.tokens_generated <= SETTINGS.max_new_tokens
        assert result.answer == final.text
        for step in result.steps:
            fed_back = max(step.tokens_generated - 1, 0)
            ran = step.input_positions - step.positions_reused
            assert step.positions_processed == ran + step.latent_steps + fed_back
            # Round 1 runs every prompt whole; later rounds reuse each agent's prompt prefix.
            assert (step.positions_reused > 0) == (step.round > 1)
    # Latent mode writes no token before the final decode; every intermediate agent thinks m steps.
    for step in latent.steps[:-1]:
        assert step.tokens_generated == 0 and step.latent_steps == SETTINGS.latent_steps
        assert step.bytes_handed > 0
    assert latent.steps[-1].latent_steps == 0
    # Text mode: every agent writes.
    assert all(1 <= s.tokens_generated for s in text.steps)
    assert latent.tokens_generated < text.tokens_generated


def test_handed_vectors_take_positions_in_the_receiver(qwen: Runtime) -> None:
    m = SETTINGS.latent_steps
    pattern, agents = _system("sequential", qwen)
    result = run("latent", pattern, agents, QUESTION, SETTINGS, fitted_links(pattern, agents))
    planner = [s for s in result.steps if s.agent == "planner"]
    # Round 1: the planner receives nothing; round 2: the solver's m thoughts.
    assert planner[1].input_positions - planner[0].input_positions == m
    pattern, agents = _system("mixture", qwen)
    result = run("latent", pattern, agents, QUESTION, SETTINGS, fitted_links(pattern, agents))
    math_steps = [s for s in result.steps if s.agent == "math"]
    assert math_steps[1].input_positions - math_steps[0].input_positions == m
    # Each expert hands m vectors of 64 floats to the summarizer only.
    assert all(s.bytes_handed == m * 64 * 4 for s in result.steps[:3])


def test_deliberation_really_runs_its_tools(qwen: Runtime) -> None:
    pattern, agents = _system("deliberation", qwen)
    for mode, links in (("text", None), ("latent", fitted_links(pattern, agents))):
        result = run(
            mode, pattern, agents, "How far is the moon? Also what is 12*12 + 1?", SETTINGS, links
        )
        tool_steps = [s for s in result.steps if s.agent == "tool_caller"]
        assert len(tool_steps) == SETTINGS.rounds
        results = tool_steps[0].tool_results
        assert "calculator: 12*12 + 1 = 145" in results
        assert any(r.startswith("search: Earth's moon:") for r in results)


def test_torch_backend_and_compiled_runtime_agree(
    qwen: Runtime, tiny_hf: Callable[[str], pathlib.Path]
) -> None:
    """Two independent implementations of the same model under one orchestrator."""
    from transformers import AutoModelForCausalLM

    # The artifact's tokenizer for both: the loop under test, not tokenizer class selection.
    model = AutoModelForCausalLM.from_pretrained(str(tiny_hf("qwen2-untied")), dtype="float32")
    torch_backend = TorchBackend(model, qwen.tokenizer, device="cpu")
    pattern, cpu_agents = _system("sequential", qwen)
    torch_agents = [Agent(a.role, torch_backend) for a in cpu_agents]
    links = fitted_links(pattern, cpu_agents)
    cpu = run("latent", pattern, cpu_agents, QUESTION, SETTINGS, links)
    ref = run("latent", pattern, torch_agents, QUESTION, SETTINGS, links)
    assert cpu.answer == ref.answer
    assert [s.input_positions for s in cpu.steps] == [s.input_positions for s in ref.steps]
    qwen.reset()
    torch_backend.reset()
    embeds = qwen.embed([1, 2, 3, 4])
    np.testing.assert_allclose(
        qwen.get_last_hidden(embeds), torch_backend.get_last_hidden(embeds), atol=1e-4
    )


def test_heterogeneous_agents(qwen: Runtime, narrow_llama: pathlib.Path) -> None:
    learner = open_backend(str(narrow_llama))
    pattern = load_pattern("distillation")
    agents = [Agent(pattern.agents[0], qwen), Agent(pattern.agents[1], learner)]
    links = fitted_links(pattern, agents)
    assert (
        links.outer[("expert", "learner")].in_dim,
        links.outer[("expert", "learner")].out_dim,
    ) == (64, 48)
    result = run("latent", pattern, agents, QUESTION, SETTINGS, links)
    expert_step = result.steps[0]
    assert expert_step.bytes_handed == SETTINGS.latent_steps * 48 * 4  # in the learner's space
    assert result.answer == result.steps[-1].text and result.steps[-1].tokens_generated >= 1
    text = run("text", pattern, agents, QUESTION, SETTINGS)
    assert text.steps[0].tokens_generated >= 1


def test_link_files_round_trip_and_are_checked_against_the_models(
    qwen: Runtime, narrow_llama: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    from mlcpatch.links.closed_form import closed_form_links
    from mlcpatch.loop.calibrate import samples

    pattern, agents = _system("distillation", qwen)
    link_file = closed_form_links([samples(a.role.name, qwen) for a in agents], pattern.handoffs())
    path = tmp_path / "links.json"
    save_links(link_file, path)
    direct = run("latent", pattern, agents, QUESTION, SETTINGS, fitted_links(pattern, agents))
    loaded = run("latent", pattern, agents, QUESTION, SETTINGS, Links.load(path, pattern, agents))
    assert loaded.answer == direct.answer
    # The same file with a learner of hidden size 48: refused, naming the link and the sizes.
    narrow = open_backend(str(narrow_llama))
    mismatched = [agents[0], Agent(agents[1].role, narrow)]
    with pytest.raises(LinkFileError, match="hidden size 48"):
        Links.load(path, pattern, mismatched)
    # A link file for another pattern lacks this pattern's links.
    sequential, seq_agents = _system("sequential", qwen)
    with pytest.raises(LinkFileError, match="not in this system"):
        Links.load(path, sequential, seq_agents)


def test_cli_compare_json(built: Callable[..., pathlib.Path]) -> None:
    folder = str(built("qwen2-untied"))
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--model",
            folder,
            "--pattern",
            "sequential",
            "--rounds",
            "2",
            "--latent-steps",
            "2",
            "--max-new-tokens",
            "4",
            "--text-tokens",
            "4",
            "--json",
            QUESTION,
        ],
    )
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [o["mode"] for o in objects] == ["text", "latent"]
    for obj in objects:
        assert {"answer", "tokens_generated", "seconds", "rounds"} <= set(obj)
        assert len(obj["rounds"]) == 2
        assert obj["tokens_generated"] == sum(r["tokens_generated"] for r in obj["rounds"])
    assert objects[1]["rounds"][0]["tokens_generated"] == 0


def test_cli_saved_links_reproduce_the_fitted_run(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    folder = str(built("qwen2-untied"))
    args = ["run", "--model", folder, "--rounds", "2", "--latent-steps", "2"]
    args += ["--max-new-tokens", "6", "--mode", "latent", "--json"]
    runner = CliRunner()
    saved = runner.invoke(main, [*args, "--save-links", str(tmp_path / "links"), QUESTION])
    assert saved.exit_code == 0, saved.output
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == [
        "links.json",
        "links.safetensors",
    ]
    loaded = runner.invoke(main, [*args, "--links", str(tmp_path / "links"), QUESTION])
    assert loaded.exit_code == 0, loaded.output

    def answer(output: str) -> dict:
        obj = json.loads(next(line for line in output.splitlines() if line.startswith("{")))
        return {k: obj[k] for k in ("answer", "tokens_generated")}

    # Links are stored as float32, so the reloaded links are bit-identical: same answer.
    assert answer(loaded.output) == answer(saved.output)
    both = runner.invoke(
        main, [*args, "--links", str(tmp_path / "links"), "--save-links", str(tmp_path / "x"), "q"]
    )
    assert both.exit_code != 0 and "cannot be used with --links" in both.output
    assert not (tmp_path / "x").exists()


def test_cli_human_output_and_errors(built: Callable[..., pathlib.Path]) -> None:
    folder = str(built("qwen2-untied"))
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "run",
            "--model",
            folder,
            "--rounds",
            "1",
            "--latent-steps",
            "1",
            "--max-new-tokens",
            "2",
            "--text-tokens",
            "2",
            QUESTION,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "== text mode ==" in result.output and "== latent mode ==" in result.output
    assert "latent vs text:" in result.output and "fewer generated tokens" in result.output
    bad = runner.invoke(main, ["run", "--model", folder, "--model", folder, QUESTION])
    assert bad.exit_code != 0
    assert "pattern sequential has 3 agents (planner, critic, solver)" in bad.output
    missing = runner.invoke(main, ["run", "--model", "/no/such/folder", QUESTION])
    assert missing.exit_code != 0 and "no such model folder" in missing.output
    zero = runner.invoke(main, ["run", "--model", folder, "--rounds", "0", QUESTION])
    assert zero.exit_code != 0 and "rounds must be at least 1" in zero.output


def test_builtin_patterns_and_pattern_file_errors(tmp_path: pathlib.Path) -> None:
    assert builtin_patterns() == ["deliberation", "distillation", "mixture", "sequential"]
    with pytest.raises(PatternError, match="unknown pattern 'nope'; built-in: deliberation"):
        load_pattern("nope")
    cases = {
        'name = "x"\n': "missing field 'agents'",
        'name = "x"\n[[agents]]\nname = "a"\ntemplate = "{question}"\n': "at least two agents",
        (
            'name = "x"\n[[agents]]\nname = "a"\ntemplate = "{question} {oops}"\n'
            '[[agents]]\nname = "b"\ntemplate = "{latent}"\nreceives = ["a"]\n'
        ): "unknown template",
        (
            'name = "x"\n[[agents]]\nname = "a"\ntemplate = "{question}"\n'
            '[[agents]]\nname = "b"\ntemplate = "{latent}"\nreceives = ["c"]\n'
        ): "unknown 'c'",
        (
            'name = "x"\n[[agents]]\nname = "a"\ntemplate = "{question}"\n'
            '[[agents]]\nname = "b"\ntemplate = "{question}"\nreceives = ["a"]\n'
        ): "no {latent} slot",
        "name = [": "not valid TOML",
    }
    for index, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"p{index}.toml"
        path.write_text(text)
        with pytest.raises(PatternError, match=message.replace("{", r"\{").replace("}", r"\}")):
            load_pattern(str(path))
    good = tmp_path / "duo.toml"
    good.write_text(
        'name = "duo"\n[[agents]]\nname = "a"\ntemplate = "{question}{latent}"\n'
        'receives = ["b"]\n[[agents]]\nname = "b"\ntemplate = "{latent} {question}"\n'
        'receives = ["a"]\n'
    )
    pattern = load_pattern(str(good))
    assert pattern.handoffs() == [("b", "a"), ("a", "b")] and pattern.final.name == "b"


def test_bench_writes_json_and_png(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    folder = str(built("qwen2-untied"))
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            folder,
            "--rounds",
            "1,2",
            "--latent-steps",
            "2",
            "--questions",
            "1",
            "--max-new-tokens",
            "3",
            "--text-tokens",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "bench.json").read_text())
    assert [row["rounds"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        latent, text = row["latent"], row["text"]
        assert row["speedup"] == pytest.approx(text["seconds"] / latent["seconds"])
        assert row["token_reduction"] == pytest.approx(
            1 - latent["tokens_generated"] / text["tokens_generated"]
        )
        # Text mode: every agent writes up to 3 tokens; latent: only the final answer.
        assert latent["tokens_generated"] <= 3 < text["tokens_generated"]
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*"))


def test_bench_batch_and_prefix_options(
    built: Callable[..., pathlib.Path], tmp_path: pathlib.Path
) -> None:
    folder = str(built("qwen2-untied"))
    args = ["bench", "--model", folder, "--rounds", "2", "--latent-steps", "2", "--questions", "3"]
    args += ["--max-new-tokens", "3", "--text-tokens", "3"]
    runner = CliRunner()
    reports = {}
    for name, extra in {
        "plain": ["--no-share-prefix"],
        "batched": ["--batch", "2"],
    }.items():
        result = runner.invoke(main, [*args, *extra, "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        assert "q/s latent" in result.output
        reports[name] = json.loads((tmp_path / name / "bench.json").read_text())
    assert (reports["plain"]["share_prefix"], reports["plain"]["batch"]) == (False, 1)
    assert (reports["batched"]["share_prefix"], reports["batched"]["batch"]) == (True, 2)
    for mode in ("latent", "text"):
        plain = reports["plain"]["results"][0][mode]
        batched = reports["batched"]["results"][0][mode]
        assert batched["tokens_generated"] == plain["tokens_generated"]
        assert batched["positions_processed"] < plain["positions_processed"]  # round 2 reuses
