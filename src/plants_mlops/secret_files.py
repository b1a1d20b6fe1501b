"""Secrets from files: for every secret variable ``X`` the project reads, ``X_FILE`` names a
file that holds its value (a Kubernetes secret volume, a Docker secret), so no secret has
to travel in a process's environment from the orchestrator.

:func:`load_secret_files` runs once at process start (the ``plants-mlops`` console script,
Kedro's ``settings.py``) and puts each value into ``os.environ``: every reader that only
knows ``X`` (boto3 and s3fs, MLflow's client, Kedro's ``${oc.env:...}``, SQLAlchemy URLs)
then works unchanged, and child processes inherit the values. ``PLANTS_DB_PASSWORD`` is
the password of ``PLANTS_DB_URL``: the URL, without its password, can live in a ConfigMap.
``PLANTS_API_KEYS_FILE`` is read by the API itself (one key per line,
``serving/config.py``).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from plants_mlops.errors import UserFacingError

SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "PLANTS_DB_URL",
    "PLANTS_DB_PASSWORD",
)


def _read(name: str, path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise UserFacingError(f"{name}_FILE={path}: cannot read it ({exc.strerror})") from None
    if not value:
        raise UserFacingError(f"{name}_FILE={path} is empty")
    return value


def _with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its password (quoted as a URL needs); refuses a URL
    that already carries another one, since one of the two would be ignored."""
    import sqlalchemy as sa

    try:
        parsed = sa.engine.make_url(url)
    except Exception:
        # the URL is not shown: it may carry credentials
        raise UserFacingError("PLANTS_DB_URL is not a database URL") from None
    if parsed.password not in (None, "", password):
        raise UserFacingError(
            "PLANTS_DB_URL carries a password and PLANTS_DB_PASSWORD(_FILE) another: set one"
        )
    return parsed.set(password=password).render_as_string(hide_password=False)


def load_secret_files(env: MutableMapping[str, str] | None = None) -> list[str]:
    """Fill each ``X`` of :data:`SECRET_VARIABLES` from the file ``X_FILE`` names; returns
    the names filled. Idempotent (a child process sees ``X`` and ``X_FILE`` agree); ``X``
    set to something else than the file holds is refused: one of the two would be
    silently ignored."""
    env = os.environ if env is None else env
    loaded = []
    for name in SECRET_VARIABLES:
        path = env.get(f"{name}_FILE", "").strip()
        if not path:
            continue
        value = _read(name, path)
        if env.get(name) and env[name] != value:
            raise UserFacingError(f"both {name} and {name}_FILE are set: set one")
        env[name] = value
        loaded.append(name)
    password = env.get("PLANTS_DB_PASSWORD")
    if password and env.get("PLANTS_DB_URL"):
        env["PLANTS_DB_URL"] = _with_password(env["PLANTS_DB_URL"], password)
    return loaded
