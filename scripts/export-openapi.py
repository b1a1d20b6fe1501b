#!/usr/bin/env python3
"""Write the prediction API's OpenAPI document, as the app serves it with the default
settings, to docs/openapi.json (the test suite checks the two are equal).

    .venv/bin/python scripts/export-openapi.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

OUT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"


def app_openapi() -> dict:
    """The document of ``create_app`` with no PLANTS_*/MLFLOW_* setting in the environment."""
    from plants_mlops.serving.app import create_app
    from plants_mlops.serving.config import ServingConfig

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLANTS_", "MLFLOW_"))}
    with mock.patch.dict(os.environ, env, clear=True):
        return create_app(ServingConfig.from_env()).openapi()


def render(document: dict) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(app_openapi()))
    print(f"wrote {OUT}", file=sys.stderr)
