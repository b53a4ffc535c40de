"""The browser page (`GET /`): headless Chromium (Debian's `chromium`, driven by Playwright) with a fake
microphone that plays real speech from data/, against the real server.

The page captures with its AudioWorklet, resamples to 16 kHz pcm_s16le and streams Baseten's protocol; the
finals it shows must match the words (WER within a few points of the file streamer on the same audio), and
partials must come first. The page names the model and engine, checks its settings before it connects (the
wrong field highlighted), and copies, downloads and clears the finals. A second server runs with --api-key:
the page asks for the key, passes it as a WebSocket subprotocol, and the "transcribe a file" button streams a
WAV through the same path. On an insecure origin the status says the page cannot capture, not "ready". The
page after each run is saved as a screenshot in build/test-output/.

`make test` installs chromium (the Makefile's `browser` target); without it these tests fail, saying how
to install it, rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path

import numpy as np
import pytest
import websockets
from playwright.async_api import Page, async_playwright

from client.kit.local_server import LocalServer
from client.kit.speech import SR, join_utterances, to_pcm16, wer
from client.protocol import metadata, stream_pcm

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "build" / "test-output"
KEY = "page-test-key_123"
UTTERANCES = ["ls_1089-134686-0001", "ls_61-70968-0000"]
INSTALL_HELP = (
    "the browser test needs Chromium: `make test` installs it (apt-get install -y chromium, as root); "
    "otherwise install Debian's/Ubuntu's `chromium` package yourself, or set CHROMIUM=/path/to/chromium"
)


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path or not shutil.which(path):
        pytest.fail(f"Chromium not found: {INSTALL_HELP}")
    return shutil.which(path) or path


def write_wav(path: Path, audio: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(to_pcm16(audio))
    return path


async def open_page(
    pw, url: str, fake_audio: Path, state: str = "idle", args: tuple[str, ...] = ()
) -> tuple[object, Page, list[str]]:
    browser = await pw.chromium.launch(
        executable_path=chromium(),
        headless=True,
        args=[
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={fake_audio}",
            *args,
        ],
    )
    page = await browser.new_page(viewport={"width": 1100, "height": 760})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
    await page.goto(url)
    await page.wait_for_function(f"() => window.whisperStream && window.whisperStream.state === '{state}'")
    return browser, page, problems


def ran(runs: int, state: str) -> str:
    """A predicate: the page has started `runs` streams and is now in `state`."""
    return f"() => window.whisperStream.runs === {runs} && window.whisperStream.state === '{state}'"


async def screenshot(page: Page, name: str) -> Path:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    await page.screenshot(path=str(path), full_page=True)
    print(f"\nscreenshot: {path}")
    return path


async def test_page_files_are_served(server):
    base = f"http://127.0.0.1:{server.port}"
    for path, content_type in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/capture-worklet.js", "text/javascript"),
        ("/style.css", "text/css"),
        ("/config.json", "application/json"),
    ]:
        with urllib.request.urlopen(base + path, timeout=10) as r:
            assert r.status == 200, path
            assert r.headers["Content-Type"].startswith(content_type), (path, r.headers["Content-Type"])
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
            body = r.read()
    assert json.loads(body) == {
        "api_key_required": False,
        "websocket_path": "/v1/websocket",
        "model": "base",
        "engine": "ctranslate2",
    }
    with urllib.request.urlopen(base + "/", timeout=10) as r:
        html = r.read().decode()
    assert "app.js" in html and "http://" not in html and "https://" not in html  # no CDN: works offline
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(base + "/../server.py", timeout=10)
    assert err.value.code == 404
    with pytest.raises(websockets.InvalidStatus) as refused:  # a WebSocket to / is told where to go
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/"):
            pass
    assert refused.value.response.status_code == 404


async def test_page_microphone_partials_then_finals(server, speech, tmp_path):
    utterances = [speech[i] for i in UTTERANCES]
    joined = join_utterances(utterances, pause_s=1.5, lead_s=1.5)
    # Trailing silence: the last final is endpointed, and Stop comes long before Chromium loops the file.
    audio = np.concatenate([joined.audio, np.zeros(int(2.5 * SR), np.float32)])
    fake_mic = write_wav(tmp_path / "fake-mic.wav", audio)
    reference = " ".join(u.text for u in utterances)

    # The file streamer on the same audio, the same settings as the page's defaults (but no partials).
    streamed = await stream_pcm(server.url, metadata(partials=False), to_pcm16(audio), speed=0)
    file_wer = wer([reference], [streamed.text])

    async with async_playwright() as pw:
        browser, page, problems = await open_page(pw, f"http://127.0.0.1:{server.port}/", fake_mic)
        try:
            assert await page.locator("#key-row").is_hidden()  # no --api-key: no key asked
            assert await page.inner_text("#model") == "Whisper base on ctranslate2"
            await check_settings_in_the_browser(page)
            await page.click("#start")
            await page.wait_for_function("() => window.whisperStream.state === 'running'", timeout=20_000)
            # live: a final on screen and the next utterance's partial dimmed below it (the README's picture)
            await page.wait_for_function(
                "() => document.querySelector('#finals .final') && $('#partial').textContent".replace(
                    "$", "document.querySelector"
                ),
                timeout=30_000,
            )
            await screenshot(page, "page-live.png")
            stop_at = joined.speech_ends[-1] + 1.2  # the last utterance's speech is over and endpointed
            await page.wait_for_function(
                f"() => window.whisperStream.audioSentS >= {stop_at}", timeout=(stop_at + 20) * 1000
            )
            await page.click("#stop")
            await page.wait_for_function("() => window.whisperStream.state === 'finished'", timeout=60_000)
            log = await page.evaluate("window.whisperStream.log")
            shown = await page.locator("#finals .final .text").all_inner_texts()
            langs = await page.locator("#finals .final .lang").all_inner_texts()
            latencies = await page.locator("#finals .final .latency").all_inner_texts()
            await screenshot(page, "page.png")
            copied, downloaded = await copy_download_and_clear(page)
        finally:
            await browser.close()

    finals = [e for e in log if e["type"] == "transcription" and e["final"] and e["text"].strip()]
    partials = [e for e in log if e["type"] == "transcription" and not e["final"] and e["text"].strip()]
    page_wer = wer([reference], [" ".join(shown)])
    print(f"page WER {page_wer:.3f} vs file streamer {file_wer:.3f}: {shown}")
    assert not problems, problems
    assert [e["text"] for e in finals] == shown  # every final with text is on the page, in order
    assert page_wer <= file_wer + 0.05, (page_wer, file_wer, shown, streamed.text)
    assert page_wer <= 0.15, shown
    # partials first: the first words showed up as a partial before any final, the first final's own partial
    # among them (later ones too unless a loaded CPU shed them: stale partials are dropped, finals never)
    assert partials and partials[0]["t"] < finals[0]["t"], log
    preceded = [f for f in finals if any(p["num"] == f["num"] and p["t"] < f["t"] for p in partials)]
    assert preceded and preceded[0] is finals[0], log
    # each final shows its language, time span and end-of-speech -> final latency
    assert langs and all(lang.startswith("en") for lang in langs), langs
    assert len(latencies) == len(shown) and all(0 < float(v.split()[1]) < 15 for v in latencies), latencies
    assert copied == downloaded == "\n".join(shown) + "\n", (copied, downloaded)


async def check_settings_in_the_browser(page: Page) -> None:
    """A VAD threshold of 2: Start names the field and highlights it, and nothing is sent; put right, the
    highlight and the message go."""
    await page.fill("#vad-threshold", "2")
    await page.click("#start")
    await page.wait_for_selector("#error:not([hidden])")
    assert (
        await page.inner_text("#error") == "Check the settings: VAD threshold must be between 0.05 and 0.95."
    )
    assert await page.get_attribute("#vad-threshold", "aria-invalid") == "true"
    assert await page.evaluate("document.activeElement.id") == "vad-threshold"
    assert await page.evaluate("[window.whisperStream.runs, window.whisperStream.state]") == [0, "idle"]
    await screenshot(page, "page-settings-check.png")
    await page.fill("#vad-threshold", "0.5")
    assert await page.get_attribute("#vad-threshold", "aria-invalid") == "false"
    assert await page.locator("#error").is_hidden()


async def copy_download_and_clear(page: Page) -> tuple[str, str]:
    """The finals as Copy puts them on the clipboard and as Download saves them; then Clear empties it."""
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.click("#copy")
    await page.wait_for_function("() => document.querySelector('#tool-note').textContent === 'copied'")
    copied = await page.evaluate("navigator.clipboard.readText()")
    async with page.expect_download() as info:
        await page.click("#download")
    download = await info.value
    assert download.suggested_filename.startswith("transcript-") and download.suggested_filename.endswith(
        ".txt"
    )
    downloaded = Path(await download.path()).read_text()
    await page.click("#clear")
    assert (
        await page.locator("#finals .final").count() == 0 and await page.locator("#placeholder").is_visible()
    )
    assert await page.locator("#copy").is_disabled() and await page.locator("#download").is_disabled()
    return copied, downloaded


@pytest.fixture(scope="module")
def keyed_server():
    proc = LocalServer("--api-key", KEY, "--max-streams", "4").wait(timeout_s=180)
    yield proc
    proc.stop()


async def test_api_key_from_a_browser(keyed_server):
    """What a browser can send: the subprotocol pair `api-key, KEY` (answered with `api-key`) or ?api_key=."""
    url = keyed_server.url
    for kwargs in ({}, {"subprotocols": ["api-key", "wrong"]}):
        with pytest.raises(websockets.InvalidStatus) as err:
            async with websockets.connect(url, **kwargs):
                pass
        assert err.value.response.status_code == 401
    for target, kwargs in ((url, {"subprotocols": ["api-key", KEY]}), (f"{url}?api_key={KEY}", {})):
        async with websockets.connect(target, **kwargs) as ws:
            assert ws.subprotocol == ("api-key" if kwargs else None)
            await ws.send(json.dumps(metadata()))
            await ws.send(json.dumps({"type": "end_audio"}))
            replies = [json.loads(m) async for m in ws]
        assert replies[-1]["body"]["status"] == "finished"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(f"{url}?api_key=wrong"):
            pass


async def test_page_api_key_and_file_button(keyed_server, speech, tmp_path):
    utterance = speech["ls_61-70968-0000"]
    silence = write_wav(tmp_path / "silence.wav", np.zeros(SR, np.float32))
    async with async_playwright() as pw:
        browser, page, problems = await open_page(pw, f"http://127.0.0.1:{keyed_server.port}/", silence)
        try:
            assert await page.locator("#key-row").is_visible()  # the page asks for the key
            await page.click("#start")  # no key yet
            await page.wait_for_selector("#error:not([hidden])")
            assert "API key" in await page.inner_text("#error")

            await page.fill("#api-key", "wrong-key")
            await page.set_input_files("#file", str(utterance.path))
            await page.wait_for_function(ran(1, "idle"))
            assert "refused the connection: the API key is wrong" in await page.inner_text("#error")

            await page.fill("#api-key", KEY)
            await page.fill("#prompt", "x" * 2100)  # over the schema's 2000 characters: refused here
            await page.set_input_files("#file", str(utterance.path))
            await page.wait_for_selector("#prompt.invalid")
            error = await page.inner_text("#error")
            assert error == "Check the settings: Prompt is 2100 characters long; at most 2000.", error
            assert await page.evaluate("window.whisperStream.runs") == 1  # nothing sent

            await page.fill("#prompt", "")
            # what only the server checks (a language code it does not know) still comes back in words
            await page.evaluate(
                "() => { const s = document.querySelector('#language'); s.add(new Option('x1', 'x1')); "
                "s.value = 'x1'; }"
            )
            await page.set_input_files("#file", str(utterance.path))
            await page.wait_for_function(ran(2, "idle"))
            error = await page.inner_text("#error")
            assert error.startswith("The server did not accept the settings:") and "ISO 639-1" in error, error

            await page.select_option("#language", "en")
            await page.set_input_files("#file", str(utterance.path))  # streamed at real-time pace
            await page.wait_for_function(ran(3, "running"), timeout=20_000)
            started = time.monotonic()
            await page.wait_for_function(
                "() => window.whisperStream.state === 'finished'", timeout=(utterance.duration_s + 40) * 1000
            )
            took = time.monotonic() - started
            assert await page.locator("#error").is_hidden()
            shown = await page.locator("#finals .final .text").all_inner_texts()
            sent = await page.evaluate("window.whisperStream.audioSentS")
            await screenshot(page, "page-api-key-file.png")
        finally:
            await browser.close()
    problems = [p for p in problems if "401" not in p and "WebSocket" not in p]  # the refused attempt
    assert not problems, problems
    assert abs(sent - utterance.duration_s) < 0.5, sent  # the whole file, once
    assert took > utterance.duration_s - 0.5, took  # at real-time pace, not as fast as possible
    assert wer([utterance.text], [" ".join(shown)]) <= 0.1, shown


async def test_page_on_an_insecure_origin_says_it_cannot_capture(server, tmp_path):
    """http:// on a name other than localhost: browsers give no microphone or AudioWorklet there, so Start
    stays disabled and the status says why (was: "ready")."""
    silence = write_wav(tmp_path / "silence.wav", np.zeros(SR, np.float32))
    rule = "--host-resolver-rules=MAP insecure.test 127.0.0.1"
    async with async_playwright() as pw:
        browser, page, problems = await open_page(
            pw, f"http://insecure.test:{server.port}/", silence, state="insecure", args=(rule,)
        )
        try:
            assert await page.evaluate("window.isSecureContext") is False
            status = await page.inner_text("#status")
            assert status == "unavailable on an insecure page", status
            assert await page.locator("#start").is_disabled() and await page.locator("#file").is_disabled()
            assert "only on secure pages" in await page.inner_text("#error")
            await screenshot(page, "page-insecure.png")
        finally:
            await browser.close()
    assert not problems, problems
