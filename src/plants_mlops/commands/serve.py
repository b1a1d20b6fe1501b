"""``plants-mlops serve``: the prediction API under uvicorn (``--workers`` processes)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys

from plants_mlops.errors import UserFacingError


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
    # Read when `serve` runs, never while building the parser: a bad PLANTS_SERVE_PORT
    # must not break `db status` or any other command.
    p.add_argument("--port", default=None, help="TCP port (default: PLANTS_SERVE_PORT or 8000)")
    p.add_argument("--model-uri", default=None, help="default models:/plants-classifier@champion")
    p.add_argument(
        "--env",
        default=None,
        help="a task's environment (conf/ENV): its title, its champion (models:/NAME@champion "
        "of its globals.yml), its table for the prediction log and feedback (over "
        "PLANTS_MODEL_URI / PLANTS_DB_URL, which name the base task's; --model-uri wins) "
        "and its retraining (pipeline run --env ENV, unless PLANTS_RETRAIN_COMMAND is set)",
    )
    p.add_argument(
        "--poll-seconds",
        type=float,
        default=None,
        help="how often to check the alias for a new version (0 = never)",
    )
    p.add_argument(
        "--workers",
        default=None,
        help="uvicorn worker processes, each with its own model (about 400 MiB): a number or "
        "auto, the default (PLANTS_SERVE_WORKERS, else one per usable core: the CPU "
        "affinity capped by the cgroup's CPU limit)",
    )
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from plants_mlops.serving.config import ServingConfig, resolve_workers
    from plants_mlops.serving.logs import configure_json_logging

    args.port = (
        parse_port(args.port, "--port")
        if args.port is not None
        else parse_port(os.environ.get("PLANTS_SERVE_PORT", "8000"), "PLANTS_SERVE_PORT")
    )
    if args.workers is None:  # not given: PLANTS_SERVE_WORKERS, else one per usable core
        args.workers = resolve_workers(os.environ.get("PLANTS_SERVE_WORKERS"))
    else:
        args.workers = resolve_workers(args.workers, "--workers")
    overrides = {"workers": args.workers}
    apply_task_settings(args.env)
    if args.model_uri:
        overrides["model_uri"] = args.model_uri
    if args.poll_seconds is not None:
        overrides["poll_seconds"] = args.poll_seconds
    if not 1 <= args.workers <= 64:
        raise UserFacingError(f"--workers {args.workers} is outside 1..64")
    config = ServingConfig.from_env(**overrides)  # bad settings stop here, in every mode
    refuse_busy_port(args.host, args.port)
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
        from plants_mlops.serving.app import create_app, server_process_settings

        server_process_settings()

        uvicorn.run(create_app(config), workers=1, **common)
        return 0
    return _serve_workers(args, overrides, level, common)


def parse_port(raw: str, name: str) -> int:
    """A TCP port from a flag or a setting, or one line saying what is wrong with it."""
    try:
        port = int(str(raw).strip())
    except ValueError:
        raise UserFacingError(f"{name}={raw!r} is not a port number (0..65535)") from None
    if not 0 <= port <= 65535:
        raise UserFacingError(f"{name}={port} is outside 0..65535")
    return port


def apply_task_settings(env: str | None) -> None:
    """The task's settings into the environment (workers inherit them): --env's champion
    and table win over PLANTS_MODEL_URI / PLANTS_DB_URL (the base task's); a set
    PLANTS_TITLE, PLANTS_UNCERTAIN_DIR or PLANTS_PREDICTION_LOG_SPILL_DIR stays."""
    for var, value in task_settings(env).items():
        if var in (
            "PLANTS_TITLE",
            "PLANTS_DESCRIPTION",
            "PLANTS_UNCERTAIN_DIR",
            "PLANTS_PREDICTION_LOG_SPILL_DIR",
        ):
            os.environ.setdefault(var, value)
        else:
            os.environ[var] = value


def task_settings(env: str | None) -> dict[str, str]:
    """The API settings a task gives: its title and description (the upload page and the
    OpenAPI info), and with ``--env`` its champion, its table (prediction log, feedback),
    its environment (what ``POST /admin/retrain`` runs: ``pipeline run --env ENV``
    unless PLANTS_RETRAIN_COMMAND says otherwise), the folder of its raw store that
    kept uncertain images go to (``ROOT/01_raw/_uncertain``) and its prediction log's spill
    folder (``ROOT/prediction_log_spill``). The task of ``--env``
    (conf/ENV), else the base task when this folder holds the project's conf/; nothing
    outside a project (a package serving a model URI)."""
    from pathlib import Path

    from plants_mlops import task

    if env is None and not (Path("conf") / "base" / "task.yml").is_file():
        return {}
    ctx = task.load(env)
    out = {"PLANTS_TITLE": ctx.task.title, "PLANTS_DESCRIPTION": ctx.task.description}
    if env is not None:
        out.update(PLANTS_MODEL_URI=ctx.model_uri, PLANTS_DB_URL=ctx.db_url, PLANTS_KEDRO_ENV=env)
        on_disk = "://" not in ctx.root
        if on_disk:  # kept uncertain images: the task's raw store
            out["PLANTS_UNCERTAIN_DIR"] = f"{ctx.root}/01_raw/_uncertain"
        # rows a store that was down missed: replayed into this task's table only (a
        # folder shared with the base task's API would replay them into its table)
        local = ctx.root if on_disk else f"data/{env}"
        out["PLANTS_PREDICTION_LOG_SPILL_DIR"] = f"{local}/prediction_log_spill"
    return out


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
    app = "plants_mlops.serving.app:create_app_from_env"
    try:
        if not hasattr(socket, "SO_REUSEPORT") or sys.platform != "linux":
            uvicorn.run(app, factory=True, workers=args.workers, **common)
            return 0
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config(app, factory=True, workers=args.workers, **common)
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        try:
            address = _reuse_port_socket(family, (config.host, config.port), WorkerListener)
        except OSError as exc:
            raise UserFacingError(f"cannot listen on {config.host}:{config.port}: {exc}") from None
        port = address.getsockname()[1]
        logging.getLogger("uvicorn.error").info(
            "serving on http://%s:%d with %d workers, one listening socket each",
            config.host,
            port,
            args.workers,
            extra={"event": "serve_started", "port": port, "workers": args.workers},
        )
        Multiprocess(config, sockets=[address]).run()
    finally:
        shutil.rmtree(shared, ignore_errors=True)
    return 0


def refuse_busy_port(host: str, port: int) -> None:
    """Exit with "address in use" when another process listens on ``host:port``: a bind
    without ``SO_REUSEPORT`` fails there, whichever options the other socket has (the
    workers' own ``SO_REUSEPORT`` sockets would otherwise join another server's port and
    take part of its traffic)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        probe.bind((host, port))
    except OSError as exc:
        reason = "address in use" if exc.errno == errno.EADDRINUSE else str(exc)
        raise UserFacingError(f"cannot listen on {host}:{port}: {reason}") from None
    finally:
        probe.close()


def _reuse_port_socket(family, address, cls=socket.socket) -> socket.socket:
    sock = cls(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.set_inheritable(True)
    return sock


class WorkerListener(socket.socket):
    """The address the workers serve. The supervisor binds it with ``SO_REUSEPORT`` and
    never listens on it; handed to a worker (uvicorn spawns them and pickles what they
    get), it arrives as that worker's own new socket bound to the same address, so each
    worker listens on a socket of its own and the kernel spreads new connections over
    them. On one listening socket shared by every worker (uvicorn's way), the worker that
    wakes first accepts every pending connection: a few keep-alive connections opened
    together (a proxy's pool, a load generator) went to one worker while the other idled
    (docs/serving.md)."""

    def __reduce_ex__(self, protocol):
        return _reuse_port_socket, (self.family, self.getsockname())
