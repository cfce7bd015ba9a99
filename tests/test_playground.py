"""The latent-loop playground (web/playground.html) in headless Chromium on WebGPU (SwiftShader).

Every flow through the page (run latent, run text, compare, stop, heterogeneous agents, and
the failures: no WebGPU, a missing artifact, no or mismatched link file) against tiny models
built for WebGPU once per session, served by `mlcpatch serve`'s server. No mocks: the page
runs the real engine in a Web Worker, and its results are held to the Python loop's
(mlcpatch.loop.orchestrator.run on the CPU runtime) with the same artifacts and link file.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

import pytest
from playground_support import broken_copy, build_models, python_run, write_links

pytestmark = pytest.mark.browser

# Latent steps are few on purpose: with closed-form links on random tiny models the latent loop
# is chaotic. Measured in Python: a 1e-7 relative nudge to each latent thought grows about 10x
# every 3 thoughts (to 7e-2 after 20), so WebGPU's ~1e-6 differences from the CPU flip greedy
# tokens once a chain passes ~10 thoughts (R=2, m=4 on sequential: 3 of 5 questions differ;
# R=2, m=2: none of 5). Text mode has no such chain and matches at any length.
SETTINGS = {"rounds": 2, "latentSteps": 2, "maxNewTokens": 16, "textTokens": 12}
QUESTION = "What is 6*7? Explain briefly."
TOOL_QUESTION = "What is 12 x 7 + 3? How fast does light travel?"
STEP_KEYS = (
    "round",
    "agent",
    "input_positions",
    "latent_steps",
    "tokens_generated",
    "positions_processed",
    "bytes_handed",
    "text",
    "tool_results",
)
FINISHED = "['done', 'error', 'stopped', 'no-webgpu'].includes(document.body.dataset.state)"
TIMEOUT_MS = 420_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from browser_support import BrowserUnavailable, find_chromium

    from mlcpatch.serve import running_server

    # `make test` installs Chromium and emscripten; without them the setup is broken, and the
    # failure says what to install rather than skipping the playground silently.
    try:
        find_chromium()
    except BrowserUnavailable as err:
        pytest.fail(str(err))
    if shutil.which("emcc") is None and not os.environ.get("MLCPATCH_PLAYGROUND_ARTIFACTS"):
        pytest.fail("WebGPU builds need emscripten: apt-get install -y emscripten")
    root = tmp_path_factory.mktemp("playground")
    folders = build_models(root / "artifacts", ["tiny-qwen2", "tiny-llama48"])
    broken_copy(folders["tiny-qwen2"], root / "artifacts" / "tiny-broken")
    qwen, llama = folders["tiny-qwen2"], folders["tiny-llama48"]
    links = {
        "sequential": write_links("sequential", [qwen] * 3, root / "links-sequential"),
        "deliberation": write_links("deliberation", [qwen] * 2, root / "links-deliberation"),
        "hetero": write_links("distillation", [qwen, llama], root / "links-hetero"),
        # Fitted for a hidden size of 48: wrong for the 64-wide qwen2 agents.
        "wrong": write_links("sequential", [llama] * 3, root / "links-wrong"),
    }
    with running_server(artifacts=root / "artifacts") as server:
        yield {"url": server.url, "folders": folders, "links": links}


@pytest.fixture(scope="module")
def page(served: dict[str, Any]) -> Iterator[Any]:
    """One page for the module: the models load once (shader compilation dominates)."""
    from browser_support import chromium

    with chromium(timeout_ms=TIMEOUT_MS) as browser:
        page = browser.new_page(served["url"] + "playground.html?model=tiny-qwen2")
        page.wait_for_function("document.body.dataset.state === 'idle'", timeout=120_000)
        yield page


def configure(page: Any, pattern: str, models: list[str] | None = None, **settings: Any) -> None:
    page.select_option("#pattern", pattern)
    values = {**SETTINGS, **settings}
    for field, selector in (
        ("rounds", "#rounds"),
        ("latentSteps", "#latent-steps"),
        ("maxNewTokens", "#max-new-tokens"),
        ("textTokens", "#text-tokens"),
    ):
        page.fill(selector, str(values[field]))
    selects = page.locator("select.agent-model")
    for i in range(selects.count()):
        selects.nth(i).select_option(models[i] if models else "tiny-qwen2")


def pick_links(page: Any, folder: pathlib.Path | None) -> None:
    """Pick the link file in `folder` (None: none) and wait until the page has read it."""
    # Picking the files already picked fires no change event: clear the input first.
    if page.evaluate("document.getElementById('links-file').files.length"):
        set_link_files(page, [])
    if folder is not None:
        set_link_files(page, [folder / "links.json", folder / "links.safetensors"])


def set_link_files(page: Any, files: list[pathlib.Path]) -> None:
    before = page.evaluate("window.playground.linkReads")
    page.set_input_files("#links-file", [str(f) for f in files])
    page.wait_for_function(f"window.playground.linkReads > {before}")


def click_and_wait(page: Any, button: str, question: str = QUESTION) -> float:
    page.fill("#question", question)
    page.evaluate("document.body.dataset.state = 'clicked'")
    start = time.perf_counter()
    page.click(button)
    page.wait_for_function(FINISHED, timeout=TIMEOUT_MS)
    return time.perf_counter() - start


def state(page: Any) -> dict[str, Any]:
    return page.evaluate(
        "({state: document.body.dataset.state, results: window.playground.results, "
        "error: window.playground.error, figures: window.playground.figures, "
        "where: window.playground.where})"
    )


def assert_same_run(js: dict[str, Any], py: dict[str, Any]) -> None:
    assert js["answer"] == py["answer"]
    assert len(js["steps"]) == len(py["steps"])
    for mine, theirs in zip(js["steps"], py["steps"], strict=True):
        assert {k: mine[k] for k in STEP_KEYS} == {k: theirs[k] for k in STEP_KEYS}
    for key in ("tokens_generated", "positions_processed", "latent_steps", "bytes_handed"):
        assert js[key] == py[key], key


def test_run_latent_equals_python(page: Any, served: dict[str, Any]) -> None:
    configure(page, "sequential")
    pick_links(page, served["links"]["sequential"])
    seconds = click_and_wait(page, "#run-latent")
    got = state(page)
    assert got["state"] == "done", got["error"]
    assert got["where"] == "worker"
    qwen = served["folders"]["tiny-qwen2"]
    links = served["links"]["sequential"]
    py = python_run("latent", "sequential", [qwen] * 3, QUESTION, SETTINGS, links)
    assert_same_run(got["results"]["latent"], py)
    assert got["results"]["latent"]["latent_steps"] == 5 * SETTINGS["latentSteps"]
    # What the page shows: the answer (rendered as Markdown, its source kept), one metrics row
    # per agent turn, the chart, the ticks.
    answer = page.locator("#result-latent .answer")
    assert answer.get_attribute("data-markdown") == py["answer"]
    assert answer.is_visible()
    if not py["answer"]:
        assert answer.inner_text() == "(empty answer)"
    assert page.locator("#result-latent .metrics-table tbody tr").count() == 6
    assert page.locator("#result-latent .transcript .turn").count() == 6
    assert page.locator("#chart rect[data-mode='latent']").count() == 2 * 2
    assert page.locator("#live-agents li").count() == 3
    print(f"browser latent run (incl. first model load): {seconds:.1f} s")


def test_run_text_with_tools_equals_python(page: Any, served: dict[str, Any]) -> None:
    configure(page, "deliberation")
    click_and_wait(page, "#run-text", TOOL_QUESTION)
    got = state(page)
    assert got["state"] == "done", got["error"]
    qwen = served["folders"]["tiny-qwen2"]
    py = python_run("text", "deliberation", [qwen] * 2, TOOL_QUESTION, SETTINGS, None)
    assert_same_run(got["results"]["text"], py)
    tools = got["results"]["text"]["steps"][1]["tool_results"]
    assert tools[0] == "calculator: 12 x 7 + 3 = 87"
    assert tools[1].startswith("search: ")
    assert page.locator("#result-text .transcript .tool").count() == 2 * 2
    assert page.locator("#result-latent").is_hidden()


def test_compare_side_by_side(page: Any, served: dict[str, Any]) -> None:
    configure(page, "sequential")
    pick_links(page, served["links"]["sequential"])
    click_and_wait(page, "#run-compare")
    got = state(page)
    assert got["state"] == "done", got["error"]
    latent, text = got["results"]["latent"], got["results"]["text"]
    assert page.locator("#result-latent").is_visible() and page.locator("#result-text").is_visible()
    assert "Latent vs text" in page.inner_text("#compare-summary")
    figures = got["figures"]
    assert figures["latent_tokens"] == latent["tokens_generated"] < text["tokens_generated"]
    assert figures["speedup"] == pytest.approx(text["seconds"] / latent["seconds"])
    assert page.locator("#chart svg").count() == 2
    assert page.locator("#chart rect[data-mode='text']").count() == 2 * 2
    # Side by side at 1280 px (the default viewport), every metric column fits: none cut off.
    for mode in ("latent", "text"):
        metrics = page.locator(f"#result-{mode} .metrics")
        assert metrics.evaluate("(m) => m.scrollWidth <= m.clientWidth"), mode
        assert page.locator(f"#result-{mode} th[data-key='seconds']").is_visible()
    qwen = served["folders"]["tiny-qwen2"]
    py = python_run("text", "sequential", [qwen] * 3, QUESTION, SETTINGS, None)
    assert_same_run(text, py)
    print(
        f"SwiftShader, tiny-qwen2, sequential R={SETTINGS['rounds']} m={SETTINGS['latentSteps']}: "
        f"latent {latent['seconds']:.2f} s "
        f"({latent['tokens_generated']} tokens), text {text['seconds']:.2f} s "
        f"({text['tokens_generated']} tokens), speedup {figures['speedup']:.2f}x"
    )


def test_stop_ends_a_run_cleanly(page: Any, served: dict[str, Any]) -> None:
    configure(page, "sequential", rounds=8, latentSteps=64)
    pick_links(page, served["links"]["sequential"])
    page.fill("#question", QUESTION)
    page.click("#run-latent")
    page.wait_for_function(
        "window.playground.events.filter((e) => e.event === 'latent').length >= 3",
        polling=50,
        timeout=TIMEOUT_MS,
    )
    page.click("#stop")
    page.wait_for_function(FINISHED, timeout=60_000)
    got = state(page)
    assert got["state"] == "stopped"
    assert "Stopped" in page.inner_text("#live-status")
    assert page.locator("#error").is_hidden()
    assert page.is_enabled("#run-latent") and page.is_disabled("#stop")
    # Nothing empty is left: no blank answer box, no bare "Per round" heading.
    assert page.locator("#per-round").is_hidden()
    assert page.locator("#result-latent .answer-block").is_hidden()
    assert page.locator("#result-text").is_hidden()
    # The worker is usable again, models still loaded.
    configure(page, "sequential")
    click_and_wait(page, "#run-latent")
    assert state(page)["state"] == "done"


def test_latent_without_link_file_says_so(page: Any) -> None:
    configure(page, "sequential")
    pick_links(page, None)
    # Latent runs wait for a link file; the page says how to write one.
    assert page.is_disabled("#run-latent") and page.is_disabled("#run-compare")
    assert page.is_enabled("#run-text")
    note = page.inner_text("#run-note")
    assert "--save-links DIR" in note and "`" not in note, note


def test_link_file_with_wrong_dimensions(page: Any, served: dict[str, Any]) -> None:
    configure(page, "sequential")
    pick_links(page, served["links"]["wrong"])
    # Refused when read (from the hidden sizes the server lists), not after a run starts.
    got = state(page)
    message = page.inner_text("#error")
    assert got["error"]["name"] == "LinkError"
    assert "in_dim=48" in message and "hidden size 64" in message, message
    assert page.is_disabled("#run-latent") and page.is_disabled("#run-compare")
    # The models it was fitted for (hidden 48) fit it.
    configure(page, "sequential", models=["tiny-llama48"] * 3)
    assert page.is_enabled("#run-latent") and page.locator("#error").is_hidden()


def test_missing_artifact(page: Any) -> None:
    configure(page, "sequential", models=["tiny-broken"] * 3)
    click_and_wait(page, "#run-text")
    got = state(page)
    assert got["state"] == "error"
    message = page.inner_text("#error")
    assert "Could not load model tiny-broken" in message
    assert "HTTP 404" in message and "webgpu.wasm" in message, message


def test_unknown_artifact_in_url(page: Any, served: dict[str, Any]) -> None:
    other = page.context.new_page()
    try:
        other.goto(served["url"] + "playground.html?model=no-such-model")
        other.wait_for_function(
            "['idle', 'error'].includes(document.body.dataset.state)", timeout=120_000
        )
        message = other.inner_text("#error")
    finally:
        other.close()
    assert "No served artifact named no-such-model" in message
    assert "tiny-qwen2" in message


def test_heterogeneous_agents(page: Any, served: dict[str, Any]) -> None:
    models = ["tiny-qwen2", "tiny-llama48"]
    configure(page, "distillation", models=models)
    pick_links(page, served["links"]["hetero"])
    assert "64→48" in page.inner_text("#links-status")
    click_and_wait(page, "#run-compare")
    got = state(page)
    assert got["state"] == "done", got["error"]
    folders = [served["folders"][m] for m in models]
    links = served["links"]["hetero"]
    for mode in ("latent", "text"):
        py = python_run(mode, "distillation", folders, QUESTION, SETTINGS, links)
        assert_same_run(got["results"][mode], py)
    # The learner (hidden 48) receives the expert's (hidden 64) thoughts: 4 vectors x 48 x 4 B.
    steps = got["results"]["latent"]["steps"]
    assert steps[0]["bytes_handed"] == SETTINGS["latentSteps"] * 48 * 4
    assert steps[1]["bytes_handed"] == SETTINGS["latentSteps"] * 64 * 4


def test_trained_links_give_the_same_answer_in_python_and_in_the_page(
    page: Any, served: dict[str, Any], tmp_path: pathlib.Path
) -> None:
    """train (the loop's own pattern) -> `mlcpatch run --links` -> the page, one link file."""
    import json

    from click.testing import CliRunner

    from mlcpatch.build.source import resolve_source
    from mlcpatch.cli import main
    from mlcpatch.training.config import build_config
    from mlcpatch.training.trainer import train

    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "What is 2 + 3?", "answer": "5"}\n' * 4)
    out = tmp_path / "trained"
    config = build_config(
        {
            # The very weights tiny-qwen2 was built from.
            "models": [str(resolve_source("tiny-random", "qwen2").folder)],
            "loop_pattern": "sequential",
            "data": str(data),
            "validation_fraction": 0.0,
            "rounds": SETTINGS["rounds"],
            "latent_steps": SETTINGS["latentSteps"],
            "stage": "outer",
            "steps": 6,
            "batch_size": 4,
            "eval_every": 0,
            "save_every": 0,
            "progress": False,
            "out": str(out),
        }
    )
    train(config, log=lambda _: None)
    qwen = served["folders"]["tiny-qwen2"]
    cli = CliRunner().invoke(
        main,
        [
            "run", "--model", str(qwen), "--pattern", "sequential", "--links", str(out),
            "--rounds", str(SETTINGS["rounds"]), "--latent-steps", str(SETTINGS["latentSteps"]),
            "--max-new-tokens", str(SETTINGS["maxNewTokens"]), "--mode", "latent", "--json",
            QUESTION,
        ],
    )  # fmt: skip
    assert cli.exit_code == 0, cli.output
    configure(page, "sequential")
    pick_links(page, out)
    click_and_wait(page, "#run-latent")
    got = state(page)
    assert got["state"] == "done", got["error"]
    assert got["results"]["latent"]["answer"] == json.loads(cli.output)["answer"]
    py = python_run("latent", "sequential", [qwen] * 3, QUESTION, SETTINGS, out)
    assert_same_run(got["results"]["latent"], py)
