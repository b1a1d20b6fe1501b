"""The upload page at ``/`` (static HTML + JS shipped inside the package), and the API's
documentation pages ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from the files the
``fastapi-offline`` package ships: they work offline, with no CDN."""

from __future__ import annotations

import html
import importlib.resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
# swagger-ui-bundle.js, swagger-ui.css (Swagger UI 5) and redoc.standalone.js (ReDoc 2)
DOCS_ASSETS = Path(str(importlib.resources.files("fastapi_offline") / "static"))
DOCS_ASSETS_URL = "/docs-static"
NO_FAVICON = "data:,"  # FastAPI's default favicon is a URL on the internet
router = APIRouter(include_in_schema=False)


@router.get("/")
def index(request: Request) -> HTMLResponse:
    """The upload page under the task's title (``serve --env``: conf/<env>/task.yml)."""
    page = (STATIC_DIR / "index.html").read_text()
    return HTMLResponse(page.replace("__TITLE__", html.escape(request.app.title)))


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=NO_FAVICON,
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url=NO_FAVICON,
        with_google_fonts=False,
    )
