"""Data files, answer extraction, configuration and the batch schedule."""

from __future__ import annotations

import json
import pathlib

import pytest

from mlcpatch.training.batches import BatchSchedule
from mlcpatch.training.config import ConfigError, build_config, read_config_file
from mlcpatch.training.data import DataError, load_builtin, load_jsonl, split_examples
from mlcpatch.training.system import AgentConfig, SystemConfig, SystemConfigError


def write(tmp_path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_reads_questions_answers_and_ignores_extras(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        [
            json.dumps({"question": "1+1?", "answer": "2", "id": 7}),
            "",
            json.dumps({"question": "Pick", "answer": 42, "choices": ["7", "42"], "x": 1}),
        ],
    )
    examples = load_jsonl(path)
    # A choice question is asked as `mlcpatch eval` asks it, and answered with the letter.
    pick = "Pick\nA) 7\nB) 42\nAnswer with the letter of the right choice."
    assert [(e.question, e.answer) for e in examples] == [("1+1?", "2"), (pick, "B")]


def test_the_target_is_the_worked_solution_when_asked_and_present(tmp_path: pathlib.Path) -> None:
    path = write(
        tmp_path,
        [
            json.dumps({"question": "3+4?", "answer": "7", "solution": "3 + 4 = 7"}),
            json.dumps({"question": "5+4?", "answer": "9"}),
        ],
    )
    worked, bare = load_jsonl(path)
    assert worked.target("solution") == "3 + 4 = 7" and worked.target("answer") == "7"
    assert bare.target("solution") == "9"  # no solution: the answer is all there is to learn
    with pytest.raises(ConfigError, match="target 'essay' is not one of"):
        build_config({"target": "essay"})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q"}', ":2: missing field 'answer'"),
        ('{"answer": "a"}', ":2: missing field 'question'"),
        ('{"question": "q", "answer": ""}', ":2: field 'answer' is empty"),
        ('{"question": ["q"], "answer": "a"}', ":2: field 'question' must be a string, got list"),
        ('{"question": "q", "answer": true}', ":2: field 'answer' must be a string, got bool"),
        ('["q", "a"]', ":2: expected a JSON object, got list"),
        ('{"question": "q", "answer": "a"', ":2: not valid JSON"),
    ],
)
def test_malformed_lines_name_file_line_and_field(
    tmp_path: pathlib.Path, line: str, message: str
) -> None:
    path = write(tmp_path, [json.dumps({"question": "ok", "answer": "1"}), line])
    with pytest.raises(DataError) as err:
        load_jsonl(path)
    assert str(err.value).startswith(f"{path}{message}")


def test_missing_and_empty_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(DataError, match=r"nope.jsonl: no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match=r"qa.jsonl: no questions"):
        load_jsonl(write(tmp_path, ["", "  "]))


def test_builtin_sample_set_ships_with_the_package() -> None:
    examples = load_builtin()
    assert len(examples) >= 32
    train, valid = split_examples(examples, 0.125, seed=0)
    assert len(valid) == 8 and len(train) == len(examples) - 8
    assert split_examples(examples, 0.125, seed=0) == (train, valid)
    assert sorted(map(repr, train + valid)) == sorted(map(repr, examples))


def test_config_file_and_overrides(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'rounds = 3\nlatent-steps = 5\nvariant = "ln-residual"\npattern = ["solver", "planner"]\n'
        '[[agents]]\nname = "planner"\nmodel = "tiny:qwen2"\n'
        'role = "Plan: {question} {latent}"\n'
        '[[agents]]\nname = "solver"\nmodel = "tiny:llama"\nrole = "Solve {question} {latent}"\n'
    )
    config = build_config(read_config_file(path), {"rounds": 1, "steps": None})
    system = config.system()
    assert (config.rounds, config.latent_steps, config.variant) == (1, 5, "ln-residual")
    assert system.pattern == ["solver", "planner"]
    # The pair the one round uses first, then the one it never reaches: a file trained for
    # one round still loads into a loop run for more.
    assert system.handoffs() == [("solver", "planner"), ("planner", "solver")]


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ({"roundz": 2}, "unknown config key 'roundz'"),
        ({"rounds": "2"}, "config key 'rounds' must be int, got str"),
        ({"resume": 1}, "config key 'resume' must be bool, got int"),
        ({"stage": "middle"}, "stage 'middle' is not one of"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"models": ["tiny:qwen2"], "rounds": 1}, "at least two turns"),
        ({"pattern": ["planner", "ghost"]}, "pattern names agent 'ghost'"),
    ],
)
def test_config_errors(layer: dict, message: str) -> None:
    with pytest.raises((ConfigError, SystemConfigError), match=message):
        build_config(layer)


def test_config_file_errors(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "run.toml"
    bad.write_text("rounds = [")
    with pytest.raises(ConfigError, match=r"run.toml: invalid TOML"):
        read_config_file(bad)
    other = tmp_path / "run.yaml"
    other.write_text("rounds: 2")
    with pytest.raises(ConfigError, match=r"config must be .toml or .json"):
        read_config_file(other)
    agents = tmp_path / "a.json"
    agents.write_text(json.dumps({"agents": [{"name": "x", "model": "tiny:qwen2", "temp": 1}]}))
    with pytest.raises(ConfigError, match=r"agents\[0\]: unknown key 'temp'"):
        build_config(read_config_file(agents))


def test_role_template_needs_one_latent_slot() -> None:
    system = SystemConfig(
        [AgentConfig("a", "tiny:qwen2", "no slot {question}"), AgentConfig("b", "m", "{latent}")]
    )
    with pytest.raises(SystemConfigError, match=r"agent a: role template must contain \{latent\}"):
        system.validate()


def test_links_follow_the_system() -> None:
    system = SystemConfig(
        [AgentConfig(n, "m", "{latent}") for n in ("p", "c", "s")], rounds=2, bottleneck=16
    )
    specs = system.link_specs({"p": 8, "c": 12, "s": 16})
    names = [s.name for s in specs]
    assert names == [
        "inner_p",
        "inner_c",
        "inner_s",
        "outer_p_to_c",
        "outer_c_to_s",
        "outer_s_to_p",
    ]
    outer = specs[4]
    assert (outer.in_dim, outer.out_dim, outer.param_shapes()["w3"]) == (12, 16, (16, 12))


def test_batch_schedule_is_a_function_of_seed_and_step() -> None:
    first = BatchSchedule(10, 4, seed=3)
    second = BatchSchedule(10, 4, seed=3)
    batches = [first.indices(i) for i in range(5)]
    assert [second.indices(i) for i in reversed(range(5))] == list(reversed(batches))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat[:10]) == list(range(10))  # each epoch visits every example once
    assert BatchSchedule(10, 4, seed=4).indices(0) != batches[0]
