"""A minimal W3C WebDriver client (httpx) over Debian's chromedriver + headless chromium.

selenium/playwright are not installed; the protocol is a handful of JSON calls."""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from support import prereqs, servers

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class Browser:
    def __init__(self, base: str, session_id: str) -> None:
        self.base = f"{base}/session/{session_id}"
        self.http = httpx.Client(timeout=60)

    def _call(self, method: str, path: str, payload: dict | None = None):
        r = self.http.request(method, f"{self.base}{path}", json=payload)
        body = r.json()
        if r.status_code >= 400:
            raise RuntimeError(f"webdriver {method} {path}: {body.get('value')}")
        return body["value"]

    def get(self, url: str) -> None:
        self._call("POST", "/url", {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(self, css: str) -> str:
        return self._call("GET", f"/element/{self.find(css)}/text")

    def send_file(self, css: str, path: Path) -> None:
        self._call("POST", f"/element/{self.find(css)}/value", {"text": str(path)})

    def script(self, source: str, *args):
        return self._call("POST", "/execute/sync", {"script": source, "args": list(args)})

    def async_script(self, source: str, *args):
        return self._call("POST", "/execute/async", {"script": source, "args": list(args)})

    def wait_for(self, source: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.script(source)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"condition never true: {source}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", "/screenshot")))
        return path


def binaries() -> tuple[str, str]:
    """``(chromium, chromedriver)`` from PATH (Debian's chromium and chromium-driver); a
    missing one skips the test, or fails it under CI=true."""
    return prereqs.need("chromium"), prereqs.need("chromedriver")


@contextlib.contextmanager
def chromium(profile_dir: Path, log_dir: Path) -> Iterator[Browser]:
    browser_bin, driver_bin = binaries()
    port = servers.free_port()
    driver = servers.ManagedProcess(
        "chromedriver",
        [driver_bin, f"--port={port}"],
        health_url=f"http://127.0.0.1:{port}/status",
        log_path=log_dir / "chromedriver.log",
    ).start(timeout=30)
    base = f"http://127.0.0.1:{port}"
    caps = {
        "capabilities": {
            "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": browser_bin,
                    "args": [
                        "--headless=new",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--disable-dev-shm-usage",
                        "--disable-quic",
                        "--no-first-run",
                        "--disable-background-networking",
                        "--disable-component-update",
                        "--disable-sync",
                        "--window-size=1000,800",
                        f"--user-data-dir={profile_dir}",
                    ],
                },
            }
        }
    }
    try:
        created = httpx.post(f"{base}/session", json=caps, timeout=60).json()["value"]
        if "sessionId" not in created:
            raise RuntimeError(f"chromedriver refused the session: {created}")
        browser = Browser(base, created["sessionId"])
        try:
            yield browser
        finally:
            with contextlib.suppress(httpx.HTTPError):
                browser.http.delete(browser.base)
    finally:
        driver.stop()
