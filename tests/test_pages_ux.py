"""What a new user meets on the chat page and the playground, in headless Chromium (WebGPU on
SwiftShader) against a tiny model served by `mlcpatch serve`: download sizes, the software-adapter
warning, link files checked when read, errors that stay visible, no silent model pick, safe
Markdown answers that stream, copy buttons, phone widths and dark mode, and a clean page after
Stop. No mocks of the page: only the chat's generate is swapped once, to feed it hostile text.
"""

from __future__ import annotations

import os
import pathlib
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playground_support import build_models

pytestmark = pytest.mark.browser

TIMEOUT_MS = 420_000
FINISHED = "['done', 'error', 'stopped', 'no-webgpu'].includes(document.body.dataset.state)"
HOSTILE = (
    '<img src=x onerror="window.__pwned = 1"> **bold** and *italic* and `a<b>` and '
    "snake_case_name and 6*7*2\n\n"
    "<script>window.__pwned = 2</script>\n\n"
    "- one\n- **two**\n\n"
    "1. first\n2. second\n\n"
    "```js\nconst x = '<b>not bold</b>';\n```\n"
    "[link](javascript:alert(1))"
)


def zero_links(pattern_name: str, width: int, out: pathlib.Path) -> pathlib.Path:
    """A link file (links.json + links.safetensors) for every agent of the pattern at hidden
    size `width`: residual links with zero weights, so they pass vectors through unchanged.
    Needs no model, so any width can be written."""
    import numpy as np

    from mlcpatch.links.files import save_links
    from mlcpatch.links.linkfile import AgentInfo, LinkFile
    from mlcpatch.links.spec import make_spec
    from mlcpatch.loop.patterns import load_pattern

    pattern = load_pattern(pattern_name)
    specs = [make_spec("inner", a.name, a.name, width, width) for a in pattern.agents]
    specs += [make_spec("outer", s, r, width, width) for s, r in pattern.handoffs()]
    tensors = {
        f"{spec.name}.{param}": np.zeros(shape, dtype=np.float32)
        for spec in specs
        for param, shape in spec.param_shapes().items()
    }
    agents = [AgentInfo(a.name, width) for a in pattern.agents]
    save_links(LinkFile(agents, specs, tensors), out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from browser_support import BrowserUnavailable, find_chromium

    from mlcpatch.serve import running_server

    try:
        find_chromium()
    except BrowserUnavailable as err:
        pytest.fail(str(err))
    if shutil.which("emcc") is None and not os.environ.get("MLCPATCH_PLAYGROUND_ARTIFACTS"):
        pytest.fail("WebGPU builds need emscripten: apt-get install -y emscripten")
    root = tmp_path_factory.mktemp("pages")
    folders = build_models(root / "artifacts", ["tiny-qwen2"])
    links = {
        "fits": zero_links("sequential", 64, root / "links-64"),
        "wrong": zero_links("sequential", 48, root / "links-48"),
    }
    with running_server(artifacts=root / "artifacts") as server:
        index = {a["name"]: a for a in server_index(server.url)}
        yield {"url": server.url, "folders": folders, "links": links, "index": index}


def server_index(url: str) -> list[dict[str, Any]]:
    import json
    import urllib.request

    with urllib.request.urlopen(url + "artifacts/index.json") as response:  # noqa: S310 (local)
        return json.load(response)["artifacts"]


@pytest.fixture(scope="module")
def browser(served: dict[str, Any]) -> Iterator[Any]:
    from browser_support import chromium

    with chromium(timeout_ms=TIMEOUT_MS) as session:
        session.context.grant_permissions(
            ["clipboard-read", "clipboard-write"], origin=served["url"].rstrip("/")
        )
        yield session


def open_page(browser: Any, url: str, ready: str = "['idle', 'error', 'ready']") -> Any:
    page = browser.new_page(url)
    page.wait_for_function(f"{ready}.includes(document.body.dataset.state)", timeout=120_000)
    return page


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


def size_label(size: int) -> str:
    """formatBytes in web/src/ui.js."""
    value, units = size / 1024, ["KiB", "MiB", "GiB"]
    unit = 0
    while value >= 1024 and unit < len(units) - 1:
        value /= 1024
        unit += 1
    return f"{value:.1f} {units[unit]}" if value < 10 else f"{round(value)} {units[unit]}"


def buttons(page: Any) -> dict[str, bool]:
    return {b: page.is_enabled(f"#run-{b}") for b in ("latent", "text", "compare")}


def scroll_width(page: Any) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


# --- before a run -------------------------------------------------------------------------


def test_download_size_and_software_adapter_warning(browser: Any, served: dict[str, Any]) -> None:
    size = size_label(served["index"]["tiny-qwen2"]["size_bytes"])
    page = open_page(browser, served["url"] + "playground.html?model=tiny-qwen2")
    try:
        assert size in page.locator("#model-all option[value='tiny-qwen2']").inner_text()
        assert (
            size in page.locator("select.agent-model option[value='tiny-qwen2']").first.inner_text()
        )
        assert f"about {size}" in page.inner_text("#download-note")
        warning = page.locator("#adapter-warning")
        assert warning.is_visible()
        assert "software adapter" in warning.inner_text() and "swiftshader" in warning.inner_text()
    finally:
        page.close()
    chat = open_page(browser, served["url"] + "index.html")
    try:
        assert size in chat.locator("#model-select option[value='tiny-qwen2']").inner_text()
        assert f"about {size}" in chat.inner_text("#model-size")
        assert chat.locator("#adapter-warning").is_visible()
        assert "software adapter" in chat.inner_text("#adapter-warning")
        # Nothing loads before Load: no empty progress bar either.
        assert chat.locator("#progress").is_hidden()
        assert chat.evaluate("window.mlcpatch.engine") is None
        # Labelled controls and the way back to the playground.
        assert chat.get_by_label("Message").count() == 1
        assert chat.get_by_label("Loading").count() == 1
        assert chat.locator("nav a[href='./playground.html']").is_visible()
    finally:
        chat.close()


def test_latent_disabled_until_a_fitting_link_file(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(browser, served["url"] + "playground.html?model=tiny-qwen2")
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    try:
        assert buttons(page) == {"latent": False, "text": True, "compare": False}
        note = page.inner_text("#run-note")
        assert "--save-links DIR" in note and "`" not in note, note
        assert page.locator("#run-note code").count() == 1
        assert "`" not in page.inner_text("#links-status")

        # A link file of the wrong width is refused when read, before any model loads.
        pick_links(page, served["links"]["wrong"])
        assert buttons(page) == {"latent": False, "text": True, "compare": False}
        message = page.inner_text("#error")
        assert page.locator("#error").is_visible()
        assert "in_dim=48" in message and "hidden size 64" in message, message
        assert page.evaluate("window.playground.error.name") == "LinkError"
        assert page.get_attribute("#links-status", "data-ok") == "no"
        assert "Refused" in page.inner_text("#links-status")
        assert page.evaluate("Object.keys(window.playground.loaded).length") == 0
        assert not [u for u in requested if "/artifacts/tiny-qwen2/" in u], requested

        # One that fits enables latent runs and clears the error.
        pick_links(page, served["links"]["fits"])
        assert buttons(page) == {"latent": True, "text": True, "compare": True}
        assert page.locator("#error").is_hidden()
        assert page.get_attribute("#links-status", "data-ok") == "yes"

        # Another pattern has other agents: the same file no longer fits.
        page.select_option("#pattern", "deliberation")
        assert buttons(page) == {"latent": False, "text": True, "compare": False}
        assert "not in the deliberation pattern" in page.inner_text("#error")
        page.select_option("#pattern", "sequential")
        assert buttons(page)["latent"] and page.locator("#error").is_hidden()
        assert not [u for u in requested if "/artifacts/tiny-qwen2/" in u], requested
    finally:
        page.close()


def test_unknown_model_and_missing_links_both_shown(browser: Any, served: dict[str, Any]) -> None:
    url = served["url"] + "playground.html?model=nope&links=/artifacts/missing/links.json"
    page = open_page(browser, url)
    try:
        errors = page.locator("#error p")
        assert errors.count() == 2
        text = page.inner_text("#error")
        assert "No served artifact named nope" in text and "tiny-qwen2" in text
        assert "/artifacts/missing/links.json" in text and "HTTP 404" in text
        # No model picked in its place.
        assert page.evaluate("document.getElementById('model-all').value") == ""
        values = page.evaluate(
            "[...document.querySelectorAll('select.agent-model')].map(s => s.value)"
        )
        assert values == ["", "", ""]
        assert buttons(page) == {"latent": False, "text": False, "compare": False}
        assert "nope is not served" in page.locator("#model-all option").first.inner_text()
        # Picking a served model answers the first error; the link error stays.
        page.select_option("#model-all", "tiny-qwen2")
        assert page.locator("#error p").count() == 1
        assert "HTTP 404" in page.inner_text("#error")
        assert buttons(page)["text"]
    finally:
        page.close()


def test_chat_unknown_model_says_so(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(browser, served["url"] + "index.html?model=nope")
    try:
        assert page.evaluate("document.body.dataset.state") == "idle"
        error = page.locator("#load-error")
        assert error.is_visible()
        assert "No served model named nope" in error.inner_text()
        assert "tiny-qwen2" in error.inner_text()
        assert "`" not in error.inner_text()
        assert page.evaluate("document.getElementById('model-select').value") == ""
        assert page.is_disabled("#load-button")
        assert page.evaluate("window.mlcpatch.engine") is None
        assert page.locator("#progress").is_hidden()
    finally:
        page.close()


def test_markdown_renderer_escapes_everything(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(browser, served["url"] + "playground.html")
    try:
        got = page.evaluate(
            """async (text) => {
              const { renderMarkdown } = await import('/src/markdown.js');
              const div = document.createElement('div');
              div.append(renderMarkdown(text));
              document.body.append(div);
              await new Promise((r) => setTimeout(r, 200));
              const count = (s) => div.querySelectorAll(s).length;
              return {
                pwned: window.__pwned ?? null, text: div.textContent,
                img: count('img'), script: count('script'), a: count('a'), b: count('b'),
                strong: [...div.querySelectorAll('strong')].map((e) => e.textContent),
                em: [...div.querySelectorAll('em')].map((e) => e.textContent),
                code: [...div.querySelectorAll('p code')].map((e) => e.textContent),
                pre: [...div.querySelectorAll('pre code')]
                  .map((e) => [e.dataset.lang, e.textContent]),
                ul: [...div.querySelectorAll('ul li')].map((e) => e.textContent),
                ol: [...div.querySelectorAll('ol li')].map((e) => e.textContent),
                p: count('p'),
              };
            }""",
            HOSTILE,
        )
    finally:
        page.close()
    assert got["pwned"] is None
    assert got["img"] == got["script"] == got["a"] == got["b"] == 0
    assert '<img src=x onerror="window.__pwned = 1">' in got["text"]
    assert "<script>window.__pwned = 2</script>" in got["text"]
    assert "[link](javascript:alert(1))" in got["text"]
    assert got["strong"] == ["bold", "two"]
    assert got["em"] == ["italic"]  # not snake_case_name, not 6*7*2
    assert "snake_case_name and 6*7*2" in got["text"]
    assert got["code"] == ["a<b>"]
    assert got["pre"] == [["js", "const x = '<b>not bold</b>';"]]
    assert got["ul"] == ["one", "two"]
    assert got["ol"] == ["first", "second"]


def test_pages_fit_a_phone_and_the_playground_has_dark_mode(
    browser: Any, served: dict[str, Any]
) -> None:
    for path in (
        "playground.html?model=nope&links=/artifacts/missing/links.json",
        "index.html?model=nope",
    ):
        page = browser.context.new_page()
        try:
            page.set_viewport_size({"width": 390, "height": 800})
            page.goto(served["url"] + path)
            page.wait_for_function("['idle', 'error'].includes(document.body.dataset.state)")
            assert scroll_width(page) <= 390, path
        finally:
            page.close()
    page = open_page(browser, served["url"] + "playground.html?model=tiny-qwen2")
    try:
        style = (
            "(() => { const s = getComputedStyle(document.documentElement);"
            " return [s.backgroundColor, s.color]; })()"
        )
        page.emulate_media(color_scheme="light")
        light = page.evaluate(style)
        page.emulate_media(color_scheme="dark")
        dark = page.evaluate(style)
        assert light != dark
        assert dark[0] == "rgb(18, 20, 23)" and light[0] == "rgb(250, 250, 250)"
    finally:
        page.close()


# --- during and after a run ----------------------------------------------------------------


@pytest.fixture(scope="module")
def playground(browser: Any, served: dict[str, Any]) -> Iterator[Any]:
    """One playground page for the runs: the model loads once."""
    page = open_page(browser, served["url"] + "playground.html?model=tiny-qwen2", "['idle']")
    pick_links(page, served["links"]["fits"])
    yield page
    page.close()


def settings(page: Any, rounds: int, steps: int, answer: int, text: int = 6) -> None:
    for selector, value in (
        ("#rounds", rounds),
        ("#latent-steps", steps),
        ("#max-new-tokens", answer),
        ("#text-tokens", text),
    ):
        page.fill(selector, str(value))


def test_playground_streams_the_answer_and_copies_it(playground: Any) -> None:
    page = playground
    settings(page, rounds=1, steps=1, answer=12)
    # Record what the answer box shows while the run is still going.
    page.evaluate(
        """() => {
          window.__seen = [];
          const answer = document.querySelector('#result-text .answer');
          new MutationObserver(() => {
            if (!['done', 'error'].includes(document.body.dataset.state)) {
              window.__seen.push(answer.dataset.markdown ?? '');
            }
          }).observe(answer, { childList: true, subtree: true, characterData: true });
        }"""
    )
    page.evaluate("document.body.dataset.state = 'clicked'")
    page.click("#run-text")
    page.wait_for_function(FINISHED, timeout=TIMEOUT_MS)
    assert page.evaluate("document.body.dataset.state") == "done", page.evaluate(
        "window.playground.error"
    )
    result = page.evaluate("window.playground.results.text")
    tokens = page.evaluate(
        "window.playground.events.filter((e) => e.event === 'token' && e.agent === 'solver')"
    )
    assert tokens and all(isinstance(e["text"], str) for e in tokens)
    assert tokens[-1]["text"].strip() == result["answer"]
    seen = [s for s in page.evaluate("window.__seen") if s]
    assert len(set(seen)) >= 2, seen  # partial answers were shown before the end
    answer = page.locator("#result-text .answer")
    assert answer.get_attribute("data-markdown") == result["answer"]
    assert answer.locator("img, script").count() == 0
    page.bring_to_front()  # the clipboard answers the focused page only
    page.click("#result-text button.copy")
    page.wait_for_function("document.querySelector('#result-text button.copy').dataset.copied")
    assert page.evaluate("navigator.clipboard.readText()") == result["answer"]
    # Both modes' metrics fit their column at 1280 px (the default viewport).
    overflow = page.evaluate(
        "[...document.querySelectorAll('.result:not([hidden]) .metrics')]"
        ".map((m) => m.scrollWidth - m.clientWidth)"
    )
    assert overflow and max(overflow) <= 0, overflow


def test_after_stop_no_empty_boxes(playground: Any) -> None:
    page = playground
    settings(page, rounds=8, steps=64, answer=16)
    page.evaluate("document.body.dataset.state = 'clicked'")
    page.click("#run-latent")
    page.wait_for_function(
        "window.playground.events.filter((e) => e.event === 'latent').length >= 3",
        polling=50,
        timeout=TIMEOUT_MS,
    )
    page.click("#stop")
    page.wait_for_function(FINISHED, timeout=60_000)
    assert page.evaluate("document.body.dataset.state") == "stopped"
    empty = page.evaluate(
        """() => {
          const shown = (el) => el.offsetParent !== null;
          const bad = [];
          const parts = '#results .answer, #results .metrics, #results .transcript, #chart';
          for (const el of document.querySelectorAll(parts)) {
            if (shown(el) && !el.hasChildNodes()) bad.push(el.id || el.className);
          }
          for (const col of document.querySelectorAll('.result')) {
            if (shown(col) && !col.querySelector('.turn')) bad.push(col.id);
          }
          return bad;
        }"""
    )
    assert empty == []
    assert page.locator("#per-round").is_hidden()  # no bare "Per round" heading
    assert page.locator("#compare-summary").is_hidden()
    assert page.locator("#result-text").is_hidden()
    assert page.locator("#result-latent .answer-block").is_hidden()
    if page.locator("#result-latent").is_visible():
        assert "stopped" in page.inner_text("#result-latent h2")


def test_chat_answer_enter_markdown_and_copy(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(
        browser, served["url"] + "index.html?model=tiny-qwen2", "['ready', 'load-error']"
    )
    try:
        assert page.evaluate("document.body.dataset.state") == "ready"
        page.fill("#max-tokens", "6")
        page.check("#greedy")
        page.fill("#prompt", "Hello there")
        page.press("#prompt", "Enter")
        page.wait_for_function(
            "document.querySelector('#stats').textContent.includes('tokens;')", timeout=120_000
        )
        assert page.input_value("#prompt") == ""  # Enter sent it, no stray newline left
        user = page.locator(".message.user")
        assert user.inner_text() == "Hello there"
        who = "(e) => getComputedStyle(e, '::before').content"
        assert user.evaluate(who) == '"You"'
        reply = page.locator(".message.assistant")
        assert reply.evaluate(who) == '"Model"'
        body = reply.locator(".body")
        raw = body.get_attribute("data-markdown")
        assert raw is not None
        page.bring_to_front()  # the clipboard answers the focused page only
        page.click(".message.assistant button.copy")
        page.wait_for_function(
            "document.querySelector('.message.assistant button.copy').dataset.copied"
        )
        assert page.evaluate("navigator.clipboard.readText()") == raw

        # Hostile model text, through the page's own streaming and rendering path.
        page.evaluate(
            """(text) => {
              const engine = window.mlcpatch.engine;
              engine.generate = async (_request, options) => {
                for (let i = 0; i < text.length; i += 17) options.onToken(0, text.slice(i, i + 17));
                return { text, outputIds: [1, 2], stoppedBy: 'eos',
                         timings: { prefillMs: 1, decodeMsPerToken: 1 } };
              };
            }""",
            HOSTILE,
        )
        page.fill("#prompt", "Say something dangerous")
        page.press("#prompt", "Enter")
        page.wait_for_function("document.querySelectorAll('.message.assistant').length === 2")
        page.wait_for_function("!document.querySelector('.message.streaming')")
        second = page.locator(".message.assistant").nth(1)
        assert page.evaluate("window.__pwned ?? null") is None
        assert second.locator("img, script, a, b").count() == 0
        assert second.locator("strong").count() == 2 and second.locator("pre code").count() == 1
        assert '<img src=x onerror="window.__pwned = 1">' in second.locator(".body").inner_text()
        second.locator("button.copy").click()
        page.wait_for_function(
            "document.querySelectorAll('.message.assistant button.copy')[1].dataset.copied"
        )
        assert page.evaluate("navigator.clipboard.readText()") == HOSTILE

        page.set_viewport_size({"width": 390, "height": 800})
        assert scroll_width(page) <= 390
    finally:
        page.close()


# --- Stop and the browser's cache on the chat page -------------------------------------------

# The chat's real generate, wrapped to never stop at EOS (a random model may say EOS at any
# time) and to count the tokens it streams; the page's options (signal, onToken) pass through.
NO_EOS_JS = """() => {
  const engine = window.mlcpatch.engine;
  const real = engine.generate.bind(engine);
  window.__tokens = 0;
  engine.generate = async (request, options) => {
    const result = await real(request, { ...options, stopTokenIds: [],
      onToken: (id, piece) => { window.__tokens++; options.onToken(id, piece); } });
    window.__result = result;
    return result;
  };
}"""


def test_chat_stop_keeps_the_partial_answer(browser: Any, served: dict[str, Any]) -> None:
    page = open_page(
        browser, served["url"] + "index.html?model=tiny-qwen2", "['ready', 'load-error']"
    )
    try:
        assert page.evaluate("document.body.dataset.state") == "ready"
        assert page.locator("#stop").is_hidden()
        page.evaluate(NO_EOS_JS)
        page.fill("#max-tokens", "2000")
        page.check("#greedy")
        page.fill("#prompt", "Tell me a very long story")
        page.press("#prompt", "Enter")
        page.wait_for_function("window.__tokens >= 5", polling=20, timeout=120_000)
        # While it runs: Stop shown, Send and Load disabled.
        assert page.locator("#stop").is_visible() and page.is_enabled("#stop")
        assert page.is_disabled("#send") and page.is_disabled("#load-button")
        assert page.evaluate("document.body.dataset.state") == "generating"
        page.click("#stop")
        page.wait_for_function("!document.querySelector('.message.streaming')", timeout=30_000)
        result = page.evaluate("window.__result")
        assert result["stopped"] is True and result["stoppedBy"] == "aborted"
        n = len(result["outputIds"])
        assert 5 <= n < 2000, n
        assert page.evaluate("window.__tokens") == n
        answer = page.locator(".message.assistant")
        assert "stopped" in (answer.get_attribute("class") or "")
        assert answer.evaluate("(e) => getComputedStyle(e, '::before').content") == (
            '"Model (stopped)"'
        )
        body = answer.locator(".body")
        assert body.is_visible()
        assert body.get_attribute("data-markdown") == result["text"]
        assert answer.locator(".stopped-note").inner_text() == f"Stopped after {n} tokens"
        assert answer.locator("button.copy").is_visible()
        assert "(stopped)" in page.inner_text("#stats")
        assert page.inner_text("#stats").startswith(f"{n} tokens;")
        # The buttons come back; the stopped answer stays in the conversation.
        assert page.locator("#stop").is_hidden()
        assert page.is_enabled("#send") and page.is_enabled("#load-button")
        assert page.evaluate("document.body.dataset.state") == "ready"
        messages = page.evaluate("window.mlcpatch.messages")
        assert messages[-1] == {"role": "assistant", "content": result["text"]}

        # And the next answer runs to its end.
        page.fill("#max-tokens", "3")
        page.fill("#prompt", "Shorter, please")
        page.press("#prompt", "Enter")
        page.wait_for_function("document.querySelectorAll('.message.assistant').length === 2")
        page.wait_for_function("!document.querySelector('.message.streaming')", timeout=60_000)
        second = page.evaluate("window.__result")
        assert second["stopped"] is False and len(second["outputIds"]) == 3
        assert page.locator(".message.assistant.stopped").count() == 1
    finally:
        page.close()


def cache_text(page: Any) -> str:
    return page.inner_text("#cache-usage")


def test_chat_caches_the_wasm_shows_usage_and_clears(browser: Any, served: dict[str, Any]) -> None:
    import re

    def watch(page: Any) -> list[str]:
        seen: list[str] = []
        page.on("request", lambda r: seen.append(r.url) if r.url.endswith(".wasm") else None)
        return seen

    def clear(page: Any) -> None:
        page.evaluate("document.getElementById('cache-note').textContent = ''")
        page.click("#clear-cache")
        page.wait_for_function(
            "/cleared|already empty/.test(document.getElementById('cache-note').textContent)"
        )
        names = page.evaluate("async () => (await import('/src/engine.js')).cacheNames()")
        assert names == []

    def load(page: Any) -> None:
        page.select_option("#model-select", "tiny-qwen2")
        page.click("#load-button")
        page.wait_for_function(
            "['ready', 'load-error'].includes(document.body.dataset.state)", timeout=300_000
        )
        assert page.evaluate("document.body.dataset.state") == "ready"

    usage = re.compile(r"^Cache: [0-9.]+ (B|KiB|MiB|GiB)$")
    page = open_page(browser, served["url"] + "index.html")
    wasm = watch(page)
    try:
        assert page.locator("#storage").is_visible()
        assert usage.match(cache_text(page)), cache_text(page)
        assert page.locator("#clear-cache").is_visible()
        clear(page)

        # First visit: the library is downloaded, and the page asks for persistent storage.
        page.evaluate("document.body.dataset.state = 'idle'")
        load(page)
        assert len(wasm) == 1, wasm
        assert page.evaluate("window.mlcpatch.engine.wasmSource") == "network"
        assert "from the browser's cache" not in page.inner_text("#stats")
        assert usage.match(cache_text(page)), cache_text(page)
        assert cache_text(page) != "Cache: 0 B"
        assert isinstance(page.evaluate("window.mlcpatch.persisted"), bool)
        assert "Persistent storage" in page.inner_text("#persist-status")
    finally:
        page.close()

    # Second visit, same browser: no request for the library.
    page = open_page(browser, served["url"] + "index.html")
    wasm = watch(page)
    try:
        assert cache_text(page) != "Cache: 0 B"
        load(page)
        assert wasm == [], wasm
        assert page.evaluate("window.mlcpatch.engine.wasmSource") == "cache"
        assert "library from the browser's cache" in page.inner_text("#stats")

        # "Clear cache" empties it: the next load downloads the library again.
        clear(page)
        page.evaluate("document.body.dataset.state = 'idle'")
        load(page)
        assert len(wasm) == 1, wasm
        assert page.evaluate("window.mlcpatch.engine.wasmSource") == "network"
    finally:
        page.close()
