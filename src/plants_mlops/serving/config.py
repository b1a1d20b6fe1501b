"""Serving configuration, read from the environment (never from git).

Every setting has an environment variable; ``plants-mlops serve`` flags override host and
port. API keys come only from ``PLANTS_API_KEYS`` (comma separated) or a file named by
``PLANTS_API_KEYS_FILE`` (one key per line).
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from plants_mlops import imaging
from plants_mlops.contracts import DEFAULT_DB_URL, DEFAULT_MODEL_URI, DEFAULT_TRACKING_URI
from plants_mlops.errors import UserFacingError
from plants_mlops.retrain import default_retrain_command

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _ratio(quota: str | None, period: str | None) -> float | None:
    """quota / period of a CFS limit; None for none ("max", -1) or an unreadable file."""
    try:
        q, p = float(quota or "nan"), float(period or "nan")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """CPUs this process's cgroup may use per period (a container's CPU limit), or None
    when no quota applies. cgroup v2: ``cpu.max`` ("QUOTA PERIOD" or "max PERIOD") of the
    process's cgroup and of every parent; v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    (-1: none). The tightest limit wins; a container usually sees its own cgroup as the
    root of the mount."""
    limits: list[float] = []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.strip("/")
        if hierarchy == "0" and controllers == "":  # v2, the unified hierarchy
            here = root / rel if rel else root
            for directory in (here, *here.parents):
                fields = (_read(directory / "cpu.max") or "").split()
                limit = _ratio(*fields) if len(fields) == 2 else None
                if limit is not None:
                    limits.append(limit)
                if directory == root:
                    break
        elif "cpu" in controllers.split(","):  # v1: the mount may be the host's or its own
            mounts = (root / controllers, root / "cpu")
            for directory in [m / rel for m in mounts if rel] + list(mounts):
                limit = _ratio(
                    _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
                )
                if limit is not None:
                    limits.append(limit)
                    break
    return min(limits) if limits else None


def usable_cores(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPU cores this process may keep busy: its affinity (not the host's count), capped
    by its cgroup's CPU quota, rounded up (a Kubernetes pod limited to 1500m gets 2). In
    a pod both matter: the affinity shows every core of the node, the quota the limit."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return cores


def default_workers() -> int:
    """``serve --workers`` unless set: one worker process per usable core (up to 64), each
    with its own model. On the 2-core machine two workers served 15-45 % more than one
    (docs/serving.md, *Performance*); each costs about 400 MiB of memory."""
    return min(64, usable_cores())


def resolve_workers(raw: str | None, name: str = "PLANTS_SERVE_WORKERS") -> int:
    """A worker count as given (``--workers`` or ``PLANTS_SERVE_WORKERS``): a number, or
    ``auto`` / unset for :func:`default_workers`. The range is checked with the others."""
    raw = (raw or "").strip().lower()
    if raw in ("", "auto"):
        return default_workers()
    try:
        return int(raw)
    except ValueError:
        raise UserFacingError(f"{name}={raw!r} is not a number of processes or auto") from None


def read_api_keys(env: dict[str, str] | None = None) -> frozenset[str]:
    env = os.environ if env is None else env
    keys = [k.strip() for k in env.get("PLANTS_API_KEYS", "").split(",")]
    key_file = env.get("PLANTS_API_KEYS_FILE", "").strip()
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise UserFacingError(f"PLANTS_API_KEYS_FILE={key_file} does not exist")
        keys += [line.strip() for line in path.read_text().splitlines()]
    return frozenset(k for k in keys if k and not k.startswith("#"))


def _db_url_problems(url: str) -> list[str]:
    """The prediction log's database URL must name an engine SQLAlchemy can load (the
    value itself is not shown: it may hold a password)."""
    import sqlalchemy as sa

    try:
        sa.engine.make_url(url).get_dialect()
    except Exception as exc:  # ArgumentError, NoSuchModuleError, a missing driver
        return [
            f"PLANTS_DB_URL: not a database URL this server can open ({type(exc).__name__}); "
            "e.g. sqlite:///data/plants.db or postgresql+psycopg2://user:pass@host/db"
        ]
    return []


def _model_uri_problems(uri: str) -> list[str]:
    from plants_mlops.model.artifact import parse_model_uri

    try:
        parse_model_uri(uri)
    except Exception as exc:
        return [f"PLANTS_MODEL_URI: {exc}"]
    return []


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# The numeric settings: field -> (environment variable, lowest, highest, unit), the range
# a running service can live with. The field's default says whether it is a whole number.
NUMBERS = {
    "poll_seconds": ("PLANTS_MODEL_POLL_SECONDS", 0.1, 86_400.0, "seconds (or 0: off)"),
    "max_upload_bytes": ("PLANTS_MAX_UPLOAD_BYTES", 1024, 100 * 1024 * 1024, "bytes"),
    "max_batch_files": ("PLANTS_MAX_BATCH_FILES", 1, 256, "files"),
    "max_batch_bytes": ("PLANTS_MAX_BATCH_BYTES", 1024, 1024 * 1024 * 1024, "bytes"),
    "body_timeout_seconds": ("PLANTS_BODY_TIMEOUT_SECONDS", 1.0, 600.0, "seconds"),
    "max_inflight_bytes": ("PLANTS_MAX_INFLIGHT_BYTES", 1024, 64 * 1024**3, "bytes"),
    "max_pixels": ("PLANTS_MAX_IMAGE_PIXELS", 10_000, 100_000_000, "pixels"),
    "decode_budget_pixels": ("PLANTS_DECODE_BUDGET_PIXELS", 1_000_000, 1_000_000_000, "pixels"),
    "ort_threads": ("PLANTS_ORT_THREADS", 1, 64, "threads"),
    "predict_threads": ("PLANTS_PREDICT_THREADS", 1, 256, "threads"),
    "workers": ("PLANTS_SERVE_WORKERS", 1, 64, "processes"),
    "log_batch_size": ("PLANTS_PREDICTION_LOG_BATCH", 1, 1_000_000, "rows"),
    "log_flush_seconds": ("PLANTS_PREDICTION_LOG_FLUSH_SECONDS", 0.05, 3_600.0, "seconds"),
    "log_retention_days": ("PLANTS_PREDICTION_LOG_RETENTION_DAYS", 1.0, 3_650.0, "days"),
    "log_max_rows": ("PLANTS_PREDICTION_LOG_MAX_ROWS", 1_000, 100_000_000, "rows"),
    "uncertain_below": ("PLANTS_UNCERTAIN_BELOW", 0.0, 1.0, "(a probability)"),
    "feedback_per_minute": ("PLANTS_FEEDBACK_PER_MINUTE", 1, 1_000_000, "per client"),
}
# The text settings: field -> environment variable (unset or empty: the field's default).
TEXTS = {
    "model_uri": "PLANTS_MODEL_URI",
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "db_url": "PLANTS_DB_URL",
    "log_s3_uri": "PLANTS_PREDICTION_LOG_URI",
    "log_spill_dir": "PLANTS_PREDICTION_LOG_SPILL_DIR",
    "retrain_cwd": "PLANTS_RETRAIN_CWD",
    "kedro_env": "PLANTS_KEDRO_ENV",
    "reload_signal_file": "PLANTS_RELOAD_SIGNAL_FILE",
    "uncertain_dir": "PLANTS_UNCERTAIN_DIR",
    "title": "PLANTS_TITLE",
    "description": "PLANTS_DESCRIPTION",
}


def _number(name: str, raw: str, default: float, bad: list[str]) -> float:
    """``raw`` (from ``name``) as a number of ``default``'s type; unparsable: a line in
    ``bad`` and the default."""
    raw = raw.strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        bad.append(f"{name}={raw!r} is not a number")
        return default
    if not math.isfinite(value):
        bad.append(f"{name}={raw} is not a finite number")
        return default
    if isinstance(default, int):
        if value != int(value):
            bad.append(f"{name}={value:g} is not a whole number")
            return default
        return int(value)
    return value


def _flag(name: str, raw: str, bad: list[str]) -> bool:
    raw = raw.strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw not in ("", "0", "false", "no", "off"):
        bad.append(f"{name}={raw!r} is not true or false")
    return False


@dataclass(frozen=True)
class ServingConfig:
    model_uri: str = DEFAULT_MODEL_URI
    tracking_uri: str = DEFAULT_TRACKING_URI
    poll_seconds: float = 30.0  # 0 disables polling (POST /admin/reload still works)
    api_keys: frozenset[str] = field(default_factory=frozenset)
    max_upload_bytes: int = 10 * 1024 * 1024
    max_batch_files: int = 32
    max_batch_bytes: int = 32 * 1024 * 1024
    body_timeout_seconds: float = 30.0  # a client silent this long while sending: 408
    # Request-body bytes held at once per worker (received, or declared by Content-Length,
    # until the request ends); over it: 503 busy. A request alone always gets in.
    max_inflight_bytes: int = 128 * 1024 * 1024
    max_pixels: int = imaging.MAX_PIXELS
    # Pixels being decoded at once across requests (imaging.DecodeBudget): one 40 Mpx
    # image, or many phone photos, decode together; more wait their turn.
    decode_budget_pixels: int = 48_000_000
    ort_threads: int = 1
    # Predictions (decode + model call) at once per worker; more wait for a thread.
    predict_threads: int = 1
    prediction_log: str = "sql"  # sql | s3 | off
    db_url: str = DEFAULT_DB_URL
    log_s3_uri: str | None = None  # s3://bucket/prefix for the parquet prediction log
    log_batch_size: int = 256  # rows per write (or log_flush_seconds): fewer commits
    log_flush_seconds: float = 1.0
    log_spill_dir: str = "data/prediction_log_spill"  # rows a store that was down missed
    log_retention_days: float = 30.0  # SQL rows older than this are deleted
    log_max_rows: int = 1_000_000  # ... and the oldest beyond this count
    retrain_command: tuple[str, ...] = ()
    retrain_cwd: str | None = None
    # The task's Kedro environment (conf/ENV, set by `serve --env`): what the default
    # retraining command runs (`pipeline run --env ENV`) and the review hints name.
    kedro_env: str | None = None
    startup_retry_seconds: float = 5.0
    # Set by ``serve --workers N`` (N > 1): a file POST /admin/reload writes to make every
    # worker reload, since the request reaches only one of them.
    reload_signal_file: str | None = None
    workers: int = 1  # worker processes serving together (serve --workers)
    # A prediction whose confidence is under this is flagged `uncertain` (0: never; 1: always).
    uncertain_below: float = 0.75
    # Keep the original bytes of uncertain predictions (for feedback) under this folder.
    keep_uncertain_images: bool = False
    uncertain_dir: str = "data/01_raw/_uncertain"
    # The task's title and description (conf/<env>/task.yml, set by `serve --env`): the
    # upload page's heading and the OpenAPI info. The labels are the loaded model's.
    title: str = "Image classifier"
    description: str = "Upload an image; the answer is one of the served model's labels."
    feedback_per_minute: int = 60  # POST /feedback per client address (serving/ratelimit.py)

    @classmethod
    def from_env(cls, **overrides) -> ServingConfig:
        """The settings from the environment, read once; every value it cannot use is one
        line of the UserFacingError it raises (not only the first)."""
        env, bad = os.environ, []
        log_kind = env.get("PLANTS_PREDICTION_LOG", "sql").strip().lower() or "sql"
        if log_kind not in ("sql", "s3", "off"):
            raise UserFacingError(f"PLANTS_PREDICTION_LOG must be sql, s3 or off, not {log_kind}")
        if "workers" not in overrides:
            overrides["workers"] = resolve_workers(env.get("PLANTS_SERVE_WORKERS"))
        # One prediction at a time per core, across the workers.
        defaults = {"predict_threads": max(1, usable_cores() // max(1, overrides["workers"]))}
        values = {
            field_name: _number(
                name, env.get(name, ""), defaults.get(field_name, getattr(cls, field_name)), bad
            )
            for field_name, (name, *_) in NUMBERS.items()
            if field_name not in overrides
        }
        values.update(
            {f: env[name] for f, name in TEXTS.items() if env.get(name) and f not in overrides}
        )
        retrain = env.get("PLANTS_RETRAIN_COMMAND", "").strip()
        values.update(
            api_keys=read_api_keys(),
            prediction_log=log_kind,
            retrain_command=tuple(shlex.split(retrain)) if retrain else (),
            keep_uncertain_images=_flag(
                "PLANTS_KEEP_UNCERTAIN_IMAGES", env.get("PLANTS_KEEP_UNCERTAIN_IMAGES", ""), bad
            ),
        )
        values.update(overrides)
        config = cls(**values)
        problems = bad + config.problems()
        if problems:
            raise UserFacingError("bad serving settings:\n" + "\n".join(problems))
        return config

    def problems(self) -> list[str]:
        """One line per setting outside its sane range (a 0 s flush interval spins a core,
        a 1 ms poll hammers the registry, a negative upload limit refuses everything)."""
        out = []
        if self.prediction_log == "s3" and not self.log_s3_uri:
            out.append("PLANTS_PREDICTION_LOG=s3 needs PLANTS_PREDICTION_LOG_URI=s3://...")
        if self.prediction_log == "sql":
            out += _db_url_problems(self.db_url)
        out += _model_uri_problems(self.model_uri)
        for field_name, (name, low, high, unit) in NUMBERS.items():
            value = getattr(self, field_name)
            if field_name == "poll_seconds" and value == 0:
                continue  # 0 = polling off, the admin reload route still works
            if not low <= value <= high:
                out.append(f"{name}={_num(value)} is outside {_num(low)}..{_num(high)} {unit}")
        return out

    def effective_retrain_command(self) -> list[str]:
        return list(self.retrain_command) or default_retrain_command(self.kedro_env)
