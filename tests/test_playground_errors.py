"""The playground and the chat page in a Chromium without WebGPU: they say so, and how to turn
WebGPU on in this browser, instead of failing silently.

Apart from test_playground.py because that module keeps one WebGPU browser open, and
Playwright's sync API cannot run a second browser beside it.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def test_no_webgpu(tmp_path) -> None:
    from browser_support import BrowserUnavailable, chromium, find_chromium

    from mlcpatch.serve import running_server

    try:
        find_chromium()
    except BrowserUnavailable as err:
        pytest.fail(str(err))
    with running_server(artifacts=tmp_path) as server, chromium(webgpu=False) as browser:
        page = browser.new_page(server.url + "playground.html")
        page.wait_for_function(
            "['no-webgpu', 'idle', 'error'].includes(document.body.dataset.state)",
            timeout=60_000,
        )
        assert page.evaluate("document.body.dataset.state") == "no-webgpu"
        assert page.locator("#no-webgpu").is_visible()
        assert "WebGPU" in page.inner_text("#no-webgpu-reason")
        assert page.locator("#app").is_hidden()
        # The advice fits the browser at hand: Chromium on Linux needs a flag, not an update.
        assert_flag_advice(page)
        page.goto(server.url + "index.html")
        page.wait_for_function("document.body.dataset.state === 'no-webgpu'", timeout=60_000)
        assert page.locator("#no-webgpu").is_visible()
        assert_flag_advice(page)


def assert_flag_advice(page) -> None:
    advice = page.inner_text("#no-webgpu-help")
    assert "--enable-unsafe-webgpu" in advice, advice
    assert "chrome://flags/#enable-unsafe-webgpu" in advice
    assert "`" not in advice
    assert "Try a recent Chrome" not in page.inner_text("#no-webgpu")
