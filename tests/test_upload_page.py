"""The upload page at / in headless Chromium (Debian's chromium via chromedriver)."""

from __future__ import annotations

import re

import httpx
import pytest
from PIL import Image
from support import images
from support.champion import register_champion, unique_model_name
from support.params import base_labels
from support.serving import running_api
from support.webdriver import binaries, chromium

from plants_mlops.model.architectures import build_model
from plants_mlops.model.export import onnx_bytes


@pytest.fixture(scope="module")
def page(tmp_path_factory, mlflow_tracking_uri):
    binaries()  # before the slow part: no browser, no point starting the API
    name = unique_model_name()
    # small_cnn as training exports it (random weights): a graph with class maps for "Why?"
    model = build_model("small_cnn", n_classes=len(base_labels()), image_size=64).eval()
    version = register_champion(mlflow_tracking_uri, name=name, onnx=onnx_bytes(model, 64)).version
    root = tmp_path_factory.mktemp("upload-page")
    with (
        running_api(root / "api", tracking_uri=mlflow_tracking_uri, model_name=name) as api,
        chromium(root / "profile", root) as browser,
    ):
        browser.get(api.url + "/")
        browser.wait_for("return document.getElementById('model').textContent.includes('v')")
        yield browser, version, root, api.url


SHOWN = "return getComputedStyle(document.getElementById('result')).display !== 'none'"


def test_on_load_the_page_shows_no_result(page):
    """No broken-image icon and no empty "Prediction:" table before a prediction."""
    browser, _, _, _ = page
    assert browser.script(SHOWN) is False
    assert browser.script("return document.getElementById('preview').offsetHeight") == 0


def test_choosing_a_file_shows_the_image_label_and_probabilities(page):
    browser, version, root, _ = page
    photo = images.sample_paths("dandelion")[0]
    browser.send_file("#file", photo)
    browser.wait_for("return document.body.dataset.state === 'done'")
    assert browser.text("#label") in base_labels()
    rows = browser.script(
        "return [...document.querySelectorAll('#probs tbody tr')].map(r => r.dataset.label)"
    )
    assert sorted(rows) == sorted(base_labels())
    # Each bar is as wide as its probability (120 px for 1): drawn without an inline
    # style attribute, which the page's own CSP (style-src 'self') blocked.
    widths = browser.script(
        "return [...document.querySelectorAll('#probs .bar')]"
        ".map(b => b.getBoundingClientRect().width)"
    )
    assert len(widths) == len(rows) and sum(widths) == pytest.approx(120, abs=len(rows))
    assert f"v{version}" in browser.text("#meta")
    assert browser.text("#model").startswith("model: ")
    shown = browser.script(
        "const i = document.getElementById('preview');return i.complete && i.naturalWidth > 0"
    )
    assert shown is True
    shot = browser.screenshot(root / "upload-page.png")
    assert Image.open(shot).size[0] >= 800


def test_why_shows_the_heat_map_of_the_answer_on_demand(page):
    browser, _, root, _ = page
    browser.send_file("#file", images.sample_paths("grass")[0])
    browser.wait_for("return document.body.dataset.state === 'done'")
    hidden = "return document.getElementById('explanation').hidden"
    assert browser.script(hidden) is True  # only on demand
    browser.script("document.getElementById('why').click()")
    browser.wait_for(
        "const i = document.getElementById('heat');return i.complete && i.naturalWidth > 0"
    )
    assert browser.script(hidden) is False
    assert browser.script("return document.getElementById('heat').naturalWidth") == 64
    label = browser.text("#label")
    assert f'speak for "{label}"' in browser.text("#why-meta")
    browser.screenshot(root / "upload-page-why.png")


def test_dropping_an_image_predicts_it_too(page):
    browser, _, _, _ = page
    browser.script("document.body.dataset.state = ''")
    browser.async_script(
        """
        const done = arguments[arguments.length - 1];
        // The bytes are decoded here, not fetched from a data: URL: the page's CSP allows
        // connections to its own origin only.
        const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
        fetch('/static/app.js').then(() => new Blob([bytes], {type: 'image/png'})).then(b => {
          const dt = new DataTransfer();
          dt.items.add(new File([b], 'dropped.png', {type: 'image/png'}));
          const drop = document.getElementById('drop');
          drop.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
          done(true);
        });
        """,
        __import__("base64").b64encode(images.png_with_alpha()).decode(),
    )
    browser.wait_for("return document.body.dataset.state === 'done'")
    assert browser.text("#label") in base_labels()


def test_a_non_image_shows_a_readable_error_and_clears_the_previous_result(page, tmp_path):
    browser, _, _, _ = page
    browser.send_file("#file", images.sample_paths("grass")[0])
    browser.wait_for("return document.body.dataset.state === 'done'")
    assert browser.script(SHOWN) is True
    bad = tmp_path / "notes.txt"
    bad.write_text("not a picture")
    browser.send_file("#file", bad)
    browser.wait_for("return document.getElementById('status').className === 'error'")
    assert "Error 415" in browser.text("#status")
    assert browser.script(SHOWN) is False  # the grass answer is gone with its image


@pytest.mark.parametrize(
    ("path", "rendered"),
    [
        ("/docs", "return document.querySelector('.swagger-ui .info .title')?.textContent"),
        ("/redoc", "return document.querySelector('.api-info h1, h1')?.textContent"),
    ],
)
def test_the_api_docs_render_offline_from_files_the_server_serves(page, path, rendered):
    browser, _, _, url = page
    html = httpx.get(url + path, timeout=10).text
    assert not re.search(r"(src|href)=[\"']https?://", html), html  # nothing from a CDN
    browser.get(url + path)
    title = browser.wait_for(rendered, timeout=30)
    assert httpx.get(url + "/openapi.json", timeout=10).json()["info"]["title"] in title
    browser.get(url + "/")  # back to the upload page for the module's other tests
