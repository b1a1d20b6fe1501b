"""``plants-mlops serve``: the prediction API under uvicorn (one process, one worker)."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the prediction API on the registry's champion",
        description=(
            "Serve models:/plants-classifier@champion over HTTP. Configuration comes from the "
            "environment: MLFLOW_TRACKING_URI, PLANTS_DB_URL (prediction log), PLANTS_API_KEYS "
            "(admin routes), PLANTS_MODEL_POLL_SECONDS ... (see docs/serving.md)."
        ),
    )
    p.add_argument("--host", default=os.environ.get("PLANTS_SERVE_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PLANTS_SERVE_PORT", "8000")))
    p.add_argument("--model-uri", default=None, help="default models:/plants-classifier@champion")
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=None,
        help="how often to check the alias for a new version (0 = never)",
    )
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from plants_mlops.serving.app import create_app
    from plants_mlops.serving.config import ServingConfig
    from plants_mlops.serving.logs import configure_json_logging

    overrides = {}
    if args.model_uri:
        overrides["model_uri"] = args.model_uri
    if args.poll_seconds is not None:
        overrides["poll_seconds"] = args.poll_seconds
    config = ServingConfig.from_env(**overrides)
    configure_json_logging(logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    app = create_app(config)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0
