"""Rendered pages in a real browser: Debian's headless Chromium, driven over the DevTools protocol with the network
off. Nothing may fail to load or be logged as an error, the screenshot must show the page, and Chinese must be drawn
as glyphs. Without Chromium these tests fail in CI (CI set) and are skipped elsewhere."""

import base64
import fcntl
import io
import json
import os
import pathlib
import select
import shutil
import socket
import subprocess
import time

import pytest
from PIL import Image, ImageChops, ImageDraw

from paddle_got.render import to_html

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "render_corpus")
CORPUS_NAMES = sorted(name[:-4] for name in os.listdir(CORPUS) if name.endswith(".txt"))
TIMEOUT = 60


def problems(events: list) -> list:
    """What went wrong while a page loaded: failed or blocked requests, error responses, errors logged."""
    urls = {
        event["params"]["requestId"]: event["params"]["request"]["url"]
        for event in events
        if event["method"] == "Network.requestWillBeSent"
    }
    found = []
    for event in events:
        method, params = event["method"], event["params"]
        if method == "Network.loadingFailed":
            found.append(
                f"request failed: {urls.get(params['requestId'])} {params['errorText']} "
                f"{params.get('blockedReason', '')}"
            )
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            found.append(f"response {params['response']['status']}: {params['response']['url']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            found.append(f"logged: {params['entry']['text']}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            found.append("console: " + " ".join(str(arg.get("value")) for arg in params["args"]))
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params['exceptionDetails']['text']}")
    return found


class Browser:
    """Headless Chromium on --remote-debugging-pipe (commands on its fd 3, replies on fd 4: no websocket needed)."""

    def __init__(self, executable: str, profile: str):
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # Chromium's ends are moved above 9, so that putting them on fds 3 and 4 cannot overwrite one another.
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
        for fd in (commands_read, replies_write):
            os.close(fd)
        args = [
            executable,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self._process = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{ends[0]} 4>&{ends[1]} {ends[0]}<&- {ends[1]}>&-', "bash", *args],
            pass_fds=ends,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for fd in ends:
            os.close(fd)
        self._buffer = b""
        self._last_id = 0

    def close(self):
        try:
            self.call("Browser.close")
        finally:
            self._process.wait(timeout=TIMEOUT)
            os.close(self._commands)
            os.close(self._replies)

    def _receive(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._replies], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 16)
            if not chunk:
                raise EOFError("Chromium exited")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session=None, events=None, **params) -> dict:
        """Send one command and return its result; the events that arrive meanwhile go to `events`."""
        self._last_id += 1
        message = {"id": self._last_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._last_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})
            if events is not None and reply.get("sessionId") == session:
                events.append(reply)

    def visit(self, path, width: int = 1200, height: int = 900, measure: str = None):
        """Open the file at `path` with the network off: `(problems, screenshot, value of the measure expression)`."""
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        events = []
        try:
            for domain in ("Page", "Network", "Runtime", "Log"):
                self.call(f"{domain}.enable", session, events)
            self.call(
                "Network.emulateNetworkConditions",
                session,
                events,
                offline=True,
                latency=0,
                downloadThroughput=-1,
                uploadThroughput=-1,
            )
            self.call(
                "Emulation.setDeviceMetricsOverride",
                session,
                events,
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            self.call("Page.navigate", session, events, url=pathlib.Path(path).as_uri())
            deadline = time.monotonic() + TIMEOUT
            while not any(event["method"] == "Page.loadEventFired" for event in events):
                event = self._receive(deadline)
                if event.get("sessionId") == session and "method" in event:
                    events.append(event)
            measured = None
            if measure:
                measured = self.call("Runtime.evaluate", session, events, expression=measure, returnByValue=True)[
                    "result"
                ]["value"]
            shot = self.call("Page.captureScreenshot", session, events, format="png")["data"]
        finally:
            self.call("Target.closeTarget", targetId=target)
        screenshot = Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
        return problems([event for event in events if "method" in event]), screenshot, measured


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "Chromium is not installed (apt-get install chromium fonts-noto-cjk)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    chromium = Browser(executable, str(tmp_path_factory.mktemp("chromium-profile")))
    yield chromium
    chromium.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scan() -> Image.Image:
    """A small stand-in for a scanned page: a few dark bars on white."""
    image = Image.new("RGB", (400, 560), "white")
    draw = ImageDraw.Draw(image)
    for row in range(8):
        draw.rectangle((40, 40 + 60 * row, 360 - 25 * (row % 3), 60 + 60 * row), fill=(40, 40, 60))
    return image


def dark_share(image: Image.Image) -> float:
    """The share of pixels darker than mid-grey."""
    histogram = image.convert("L").histogram()
    return sum(histogram[:128]) / (image.width * image.height)


def write(tmp_path, name: str, document: str) -> str:
    path = tmp_path / name
    path.write_text(document, encoding="utf-8")
    return str(path)


def test_the_checks_catch_a_network_load_and_a_console_error(browser, tmp_path):
    """A control page without our policy: its network image and its console.error must both be reported."""
    url = f"http://127.0.0.1:{closed_port()}/x.png"
    control = write(
        tmp_path,
        "control.html",
        f'<!DOCTYPE html><meta charset="utf-8"><p>control</p>'
        f'<img src="{url}"><script>console.error("control error")</script>',
    )
    found, _, _ = browser.visit(control)
    assert any(line.startswith(f"request failed: {url}") for line in found), found
    assert "console: control error" in found, found


def test_the_page_policy_blocks_scripts_and_network_loads(browser, tmp_path):
    """Our Content-Security-Policy at work: a script and a network image slipped into a page are refused."""
    url = f"http://127.0.0.1:{closed_port()}/y.png"
    document = to_html("text").replace(
        "</main>", f'<script>console.error("script ran")</script><img src="{url}"></main>'
    )
    found, _, _ = browser.visit(write(tmp_path, "policy.html", document))
    assert "console: script ran" not in found
    assert any(line.startswith(f"request failed: {url}") and line.endswith("csp") for line in found), found
    assert any("Content Security Policy" in line and "inline script" in line for line in found), found


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_corpus_pages_load_cleanly_and_are_drawn(browser, tmp_path, name):
    with open(os.path.join(CORPUS, f"{name}.txt"), encoding="utf-8") as f:
        document = to_html(f.read(), scan(), title=name)
    found, screenshot, _ = browser.visit(write(tmp_path, f"{name}.html", document))
    assert found == []
    text_side = screenshot.crop((screenshot.width // 2, 0, screenshot.width, screenshot.height))
    assert len(text_side.getcolors(maxcolors=1 << 24)) > 50  # anti-aliased text: many shades (an empty page: 3)
    assert dark_share(text_side) > 0.002


def test_the_image_is_beside_the_text_on_wide_screens_and_above_it_on_narrow_ones(browser, tmp_path):
    path = write(tmp_path, "layout.html", to_html("\\title{Layout}\n\nSome text.", scan()))
    measure = (
        "JSON.stringify(['.scan', '.text'].map(s => document.querySelector(s).getBoundingClientRect())"
        ".map(r => [r.left, r.top, r.right, r.bottom]))"
    )
    _, _, wide = browser.visit(path, width=1200, measure=measure)
    (image_left, image_top, image_right, _), (text_left, text_top, _, _) = json.loads(wide)
    assert image_left < image_right <= text_left and image_top == text_top
    _, _, narrow = browser.visit(path, width=600, measure=measure)
    (image_left, _, _, image_bottom), (text_left, text_top, _, _) = json.loads(narrow)
    assert image_left == text_left and image_bottom <= text_top


def test_chinese_is_drawn_as_glyphs(browser, tmp_path):
    """A Chinese font is installed, and two different Chinese headings draw different ink (missing glyphs would
    all be the same box)."""
    fonts = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, timeout=TIMEOUT).stdout
    assert fonts.strip(), "no Chinese font (apt-get install fonts-noto-cjk)"
    shots = []
    for number, heading in enumerate(["汉字测试", "表格识别"]):
        path = write(tmp_path, f"zh{number}.html", to_html(f"\\title{{{heading}}}"))
        found, screenshot, _ = browser.visit(path, width=600, height=200)
        assert found == []
        shots.append(screenshot.convert("L"))
        assert dark_share(screenshot) > 0.005
    assert sum(ImageChops.difference(*shots).histogram()[64:]) > 500  # pixels that differ clearly


def test_plain_text_is_drawn_as_read_and_several_pages_load_cleanly(browser, tmp_path):
    text = "Total:  12 * 3\n    # not a heading\n<b>not bold</b>"
    path = write(tmp_path, "plain.html", to_html(text, scan(), ocr_type="ocr"))
    found, screenshot, shown = browser.visit(path, measure="document.querySelector('pre.plain').innerText")
    assert found == [] and shown == text
    assert dark_share(screenshot.crop((screenshot.width // 2, 0, screenshot.width, screenshot.height))) > 0.0005
    pages = to_html(["\\title{One}", "\\title{Two}"], [scan(), [scan(), scan()]], title="pages")
    measure = "JSON.stringify([...document.querySelectorAll('section')].map(s => s.querySelectorAll('img').length))"
    found, _, counts = browser.visit(write(tmp_path, "pages.html", pages), measure=measure)
    assert found == [] and json.loads(counts) == [1, 2]
