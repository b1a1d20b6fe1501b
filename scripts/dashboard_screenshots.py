"""Screenshots of the running dashboards for docs/img (headless Chromium over CDP).

``--dump-dom``/``--screenshot`` with ``--virtual-time-budget`` render the ZenML run list
but never finish the run DAG (its layout runs in a web worker that virtual time does not
advance); driving Chromium through the DevTools protocol in real time does.

    python scripts/dashboard_screenshots.py --zenml URL --viz URL --mlflow URL --run-id ID
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from websockets.sync.client import connect

# kedro-viz keeps its settings in localStorage["KedroViz"]: no feature-hint pop-ups.
VIZ_SETTINGS = (
    "localStorage.setItem('KedroViz', JSON.stringify(Object.assign("
    "JSON.parse(localStorage.getItem('KedroViz') || '{}'),"
    "{showFeatureHints: false, theme: 'light', isPrettyName: false})))"
)
OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def text(self) -> str:
        res = self.call(
            "Runtime.evaluate", expression="document.body.innerText", returnByValue=True
        )
        return res.get("result", {}).get("value") or ""

    def shot(
        self,
        url: str,
        path: Path,
        wait_for: str,
        settle: float = 2.0,
        timeout: float = 60.0,
        setup_js: str | None = None,
    ) -> str:
        if setup_js:  # runs before the page's own scripts (e.g. settings in localStorage)
            self.call("Page.addScriptToEvaluateOnNewDocument", source=setup_js)
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while wait_for not in self.text():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{wait_for!r} never appeared on {url}")
            time.sleep(0.5)
        time.sleep(settle)
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return self.text()


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Page]:
    port = _free_port()
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [
            shutil.which("chromium") or "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--remote-debugging-port={port}",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    break
            time.sleep(0.2)
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024) as ws:
            page = Page(ws)
            page.call("Page.enable")
            yield page
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zenml")
    ap.add_argument("--run-id")
    ap.add_argument("--viz")
    ap.add_argument("--mlflow")
    ap.add_argument("--experiment-id", default="1", help="MLflow id of plants-classifier")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    with chromium() as page:
        if args.zenml:
            page.shot(f"{args.zenml}/projects/default/runs", OUT / "zenml_runs.png", "plants_mlops")
            if args.run_id:
                page.shot(
                    f"{args.zenml}/projects/default/runs/{args.run_id}",
                    OUT / "zenml_run_dag.png",
                    "registry",
                    settle=4,
                )
        if args.viz:
            page.shot(
                f"{args.viz}/",
                OUT / "kedro_viz.png",
                "train_model",
                settle=4,
                setup_js=VIZ_SETTINGS,
            )
        if args.mlflow:
            page.shot(
                f"{args.mlflow}/#/experiments/{args.experiment_id}/runs",
                OUT / "mlflow_ui.png",
                "plants_mlops-",
                settle=4,
            )
    for png in sorted(OUT.glob("*.png")):
        print(png, png.stat().st_size)


if __name__ == "__main__":
    main()
