"""Screenshot of the upload page for README.md: ``docs/img/upload-page.png``.

Starts ``plants-mlops serve`` on a free 127.0.0.1 port against the project's champion
(``models:/plants-classifier@champion`` in ``data/mlflow.db``: run ``make demo`` first), with
its prediction log in a throw-away database, opens ``/`` in headless Chromium (Debian's
``chromium``, as ``bash scripts/test-prereqs.sh`` installs it), uploads a sample photo,
waits for the answer and saves the page, 1000 px wide, as a palette PNG.

    .venv/bin/python scripts/screenshot-upload-page.py [--photo samples/plants/dandelion/00000000.jpg]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dashboard_screenshots import chromium  # noqa: E402  (scripts/dashboard_screenshots.py)
from product_model import start_server  # noqa: E402  (benchmarks/product_model.py)

from plants_mlops.commands.serve import task_settings  # noqa: E402

OUT = ROOT / "docs" / "img" / "upload-page.png"
PHOTO = ROOT / "samples" / "plants" / "dandelion" / "00000000.jpg"


def upload(page, photo: Path, timeout: float = 60.0) -> str:
    """Choose ``photo`` in the page's file input (as a person would) and wait until the
    page shows its answer; returns the label shown."""
    found = page.call("Runtime.evaluate", expression="document.getElementById('file')")
    page.call("DOM.setFileInputFiles", files=[str(photo)], objectId=found["result"]["objectId"])
    deadline = time.monotonic() + timeout
    while True:
        state = page.call(
            "Runtime.evaluate", expression="document.body.dataset.state", returnByValue=True
        )["result"].get("value")
        if state == "done":
            break
        if state == "error" or time.monotonic() > deadline:
            raise RuntimeError(f"the page did not answer (state {state!r}): {page.text()[:500]}")
        time.sleep(0.2)
    time.sleep(0.5)  # the preview image paints
    return page.call(
        "Runtime.evaluate",
        expression="document.getElementById('label').textContent",
        returnByValue=True,
    )["result"]["value"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=PHOTO, help="the photo to upload")
    ap.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{ROOT / 'data' / 'mlflow.db'}",
        help="the MLflow registry holding the champion (default: the project's)",
    )
    ap.add_argument("--model-uri", default="models:/plants-classifier@champion")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=760)
    args = ap.parse_args()
    if not shutil.which("chromium"):
        print("chromium not found: run `bash scripts/test-prereqs.sh` (as root) first")
        return 1
    # The page's heading and text: the shipped task's (conf/base/task.yml), as
    # `plants-mlops serve` run in the project shows them.
    os.chdir(ROOT)
    shown = task_settings(None)  # PLANTS_TITLE, PLANTS_DESCRIPTION (no --env: nothing else)
    work = Path(tempfile.mkdtemp(prefix="upload-page-"))
    try:
        proc, port = start_server(args.tracking_uri, args.model_uri, work, shown)
    except (RuntimeError, TimeoutError) as e:
        print(f"the API did not start (run `make demo` first?):\n{e}")
        return 1
    try:
        with chromium(args.width, args.height) as page:
            page.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            time.sleep(1.0)  # the page loads and asks /model
            label = upload(page, args.photo.resolve())
            shot = page.call("Page.captureScreenshot", format="png")["data"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    img = Image.open(io.BytesIO(base64.b64decode(shot))).convert("RGB")
    # 256 colours: a third of the size of the full-colour PNG, the text as sharp
    img = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(f"{args.out} ({args.out.stat().st_size // 1024} KB, {img.width}x{img.height}): {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
