"""``plants-mlops serve``: the prediction API under uvicorn (``--workers`` processes)."""

from __future__ import annotations

import argparse
import os

DEFAULT_WORKERS = 1


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
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("PLANTS_SERVE_WORKERS", str(DEFAULT_WORKERS))),
        help=f"uvicorn worker processes, each with its own model (default {DEFAULT_WORKERS})",
    )
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from plants_mlops.errors import UserFacingError
    from plants_mlops.serving.config import ServingConfig
    from plants_mlops.serving.logs import configure_json_logging

    overrides = {"workers": args.workers}
    if args.model_uri:
        overrides["model_uri"] = args.model_uri
    if args.poll_seconds is not None:
        overrides["poll_seconds"] = args.poll_seconds
    if not 1 <= args.workers <= 64:
        raise UserFacingError(f"--workers {args.workers} is outside 1..64")
    config = ServingConfig.from_env(**overrides)  # bad settings stop here, in every mode
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    configure_json_logging(level)
    common = dict(
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    if args.workers == 1:
        from plants_mlops.serving.app import create_app

        uvicorn.run(create_app(config), workers=1, **common)
        return 0
    return _serve_workers(args, overrides, level, common)


def _serve_workers(args, overrides: dict, level: int, common: dict) -> int:
    """Several worker processes on one port (uvicorn's supervisor). Each worker builds the
    app from the environment, loads the model once and watches the alias itself; a reload
    asked through one worker reaches the others through a signal file; Prometheus values
    are combined across workers through a multiprocess directory."""
    import shutil
    import tempfile

    import uvicorn

    shared = tempfile.mkdtemp(prefix="plants-serve-")
    prom_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(shared, "prometheus")
    os.makedirs(prom_dir, exist_ok=True)
    for name in os.listdir(prom_dir):  # values of an earlier run must not add up
        if name.endswith(".db"):
            os.remove(os.path.join(prom_dir, name))
    env = {
        "PROMETHEUS_MULTIPROC_DIR": prom_dir,
        "PLANTS_RELOAD_SIGNAL_FILE": os.path.join(shared, "reload"),
        "PLANTS_LOG_LEVEL": str(level),
        "PLANTS_SERVE_WORKERS": str(args.workers),
    }
    if "model_uri" in overrides:  # (workers build their settings from the environment)
        env["PLANTS_MODEL_URI"] = overrides["model_uri"]
    if "poll_seconds" in overrides:
        env["PLANTS_MODEL_POLL_SECONDS"] = str(overrides["poll_seconds"])
    os.environ.update(env)  # the workers are spawned with this environment
    try:
        uvicorn.run(
            "plants_mlops.serving.app:create_app_from_env",
            factory=True,
            workers=args.workers,
            **common,
        )
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return 0
