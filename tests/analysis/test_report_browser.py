"""The HTML report as a person sees it: headless Chromium opens report.html, every figure loads, the console
stays clean, and a screenshot is taken.

Chromium is driven through its DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages ended
by NUL on file descriptors 3 and 4), so the test needs nothing beyond the standard library and Debian's
``chromium`` (installed by ``scripts/setup.sh --dev``).
"""

import base64
import json
import os
import select
import shutil
import subprocess
import time

import pytest

from clq.analysis import render_report

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (scripts/setup.sh --dev installs "
                                                             "Debian's chromium)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Browser:
    """One headless Chromium and one page, spoken to with DevTools protocol commands over a pipe."""

    def __init__(self, profile_dir, log_path, width=1100, height=900, timeout=20.0):
        self.timeout = timeout
        cmd_r, self._cmd_w = os.pipe()   # we write commands, Chromium reads them as fd 3
        self._out_r, out_w = os.pipe()   # Chromium writes replies and events to fd 4, we read them
        self._log = open(log_path, "wb")
        # bash moves the pipe ends to fds 3 and 4 and execs Chromium (no preexec_fn: safe with threads around).
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-', "bash", CHROMIUM, "--headless",
             "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
             f"--user-data-dir={profile_dir}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log, pass_fds=(cmd_r, out_w))
        os.close(cmd_r)
        os.close(out_w)
        self._buf, self._next_id, self.events, self.session = b"", 0, [], None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _read_message(self, deadline):
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._out_r], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._out_r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method, **params):
        """Run one command on the page (the browser before a page is attached); keep the events that arrive."""
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if self.session is not None and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method):
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def open(self, path):
        """Load a local file and wait for its load event (every <img> has loaded or failed by then)."""
        self.events.clear()
        self.send("Page.navigate", url="file://" + os.path.abspath(path))
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression):
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression}: {res['exceptionDetails']}")
        return res["result"]["value"]

    def console_errors(self):
        """What the page's console shows as errors: console.error/assert, uncaught exceptions, and the browser's
        own error entries (a resource that failed to load, a blocked request)."""
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append("console." + p["type"] + ": " + " ".join(str(a.get("value", a.get("description")))
                                                                   for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("uncaught: " + d.get("exception", {}).get("description", d.get("text", "")))
            elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"{p['entry']['source']}: {p['entry']['text']} {p['entry'].get('url', '')}".strip())
        return out

    def screenshot(self, path):
        """A PNG of the whole page, not only the window."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return path

    def close(self):
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        os.close(self._out_r)
        self._log.close()


#: Every <img> of the page as the browser holds it: loaded (complete, natural size > 0) and drawn (shown width).
IMAGES = ("Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 30), complete: i.complete, "
          "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight, "
          "shownWidth: i.getBoundingClientRect().width}))")


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile", tmp_path / "chromium.log")
    yield b
    b.close()


def _png_size(path):
    head = open(path, "rb").read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


@needs_chromium
def test_report_in_headless_chromium(fake_sweep, tmp_path, browser):
    report = render_report(fake_sweep)
    browser.open(report)
    assert browser.evaluate("document.title") == "clq sweep report"
    images = browser.evaluate(IMAGES)
    assert len(images) == 5  # memory, latency, energy, per event, breakdown
    for img in images:
        assert img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0, img
        assert 0 < img["shownWidth"] <= 1100, img  # drawn, and scaled into the page (img{max-width:100%})
    assert browser.console_errors() == []
    tables = browser.evaluate("document.querySelectorAll('table').length")
    assert tables == 3  # members that did not complete, configurations, comparison with the paper
    shot = browser.screenshot(tmp_path / "report.png")
    width, height = _png_size(shot)
    assert width == 1100 and height > 5 * 300  # the whole page: five figures of a few hundred pixels each


@needs_chromium
def test_browser_check_catches_a_broken_figure_and_console_errors(fake_sweep, tmp_path, browser):
    """The same checks on a report with one figure's file missing and a script error must fail."""
    text = open(render_report(fake_sweep)).read()
    text = text.replace('<img src="data:image/png;base64,', '<img src="missing.png" data-was="', 1)
    text = text.replace("</body>", "<script>console.error('figure script failed'); undefined_fn();</script></body>")
    broken = tmp_path / "broken.html"
    broken.write_text(text)
    browser.open(broken)
    widths = [img["naturalWidth"] for img in browser.evaluate(IMAGES)]
    assert len(widths) == 5 and widths.count(0) == 1
    errors = browser.console_errors()
    assert any("figure script failed" in e for e in errors), errors
    assert any(e.startswith("uncaught:") and "undefined_fn" in e for e in errors), errors
    assert any("missing.png" in e for e in errors), errors
