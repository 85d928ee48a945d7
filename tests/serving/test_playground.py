"""A person at the playground: headless Chromium opens the server's page, types a prompt, presses Generate, watches
the text grow, and presses Stop. Skipped where Chromium is not installed; everything stays on 127.0.0.1."""

import math
import time

import pytest

from tests.helpers import CHROMIUM, Browser, LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]


def run(browser: Browser, expression: str):
    """The value of a JavaScript expression in the open page."""
    return browser.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")


def shown(browser: Browser) -> int:
    return run(browser, "(document.getElementById('completion') || {textContent: ''}).textContent.length")


def test_the_playground_streams_text_and_stop_ends_it(ckpt, tmp_path):
    server = LiveServer(ckpt)
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.text_once_shown(server.url + "/", ["model: g"])
        run(browser, "document.getElementById('prompt').value = ''; document.getElementById('prompt').focus()")
        browser.call("Input.insertText", text="All:")
        run(browser, "document.getElementById('max_tokens').value = '4000'")
        run(browser, "document.getElementById('generate').click()")
        lengths, deadline = [], time.time() + 20
        while time.time() < deadline and not (len(lengths) > 1 and 0 < lengths[-2] < lengths[-1]):
            time.sleep(0.2)
            lengths.append(shown(browser))
        assert 0 < lengths[-2] < lengths[-1] < 4000, lengths  # the text grows as it streams
        assert "tokens/s" in run(browser, "document.getElementById('status').textContent")
        run(browser, "document.getElementById('stop').click()")
        time.sleep(0.3)
        stopped = shown(browser)
        time.sleep(0.5)
        assert shown(browser) == stopped < 4000
        assert run(browser, "document.getElementById('status').textContent").startswith("stopped after")
        assert run(browser, "document.getElementById('prompt').value") == "All:"
        assert server.wait_until_idle() == 0  # the server freed the slot
    finally:
        browser.close()
        server.close()


def test_show_probabilities_colours_each_character_by_the_models_probability(ckpt, tmp_path):
    server = LiveServer(ckpt, "--dtype", "float32")
    browser = Browser(tmp_path / "chromium-profile")
    try:
        browser.text_once_shown(server.url + "/", ["model: g"])
        settings = {"prompt": "All:", "max_tokens": "30", "seed": "3", "temperature": "0.9"}
        for field, value in settings.items():
            run(browser, f"document.getElementById('{field}').value = '{value}'")
        run(browser, "document.getElementById('probabilities').click(); document.getElementById('generate').click()")
        deadline = time.time() + 20
        while time.time() < deadline and not run(browser, "document.getElementById('status').textContent").startswith(
            "done"
        ):
            time.sleep(0.2)
        spans = run(
            browser,
            """[...document.querySelectorAll('#completion .token')].map(
            s => [s.textContent, parseFloat(s.dataset.p), s.title, getComputedStyle(s).backgroundColor])""",
        )
        reply = server.client().completions.create(model="g", prompt="All:", max_tokens=30, seed=3, temperature=0.9,
                                                   logprobs=5)  # fmt: skip
        expected = reply.choices[0].logprobs
        assert [s[0] for s in spans] == expected.tokens and len(spans) == 30
        for (token, p, title, colour), logprob, top in zip(spans, expected.token_logprobs, expected.top_logprobs):
            assert p == pytest.approx(math.exp(logprob), rel=1e-6)
            lines = title.split("\n")  # the most likely characters, the drawn one marked
            assert len(lines) == len(top) and f"> {token if token.strip() else ''}" in title
            assert f"{100 * math.exp(logprob):.1f}%" in next(line for line in lines if line.startswith(">"))
            assert colour.startswith("rgb(")
        assert run(browser, "getComputedStyle(document.getElementById('legend')).display") == "block"
    finally:
        browser.close()
        server.close()
