"""What every table module of the database shares: the metadata the tables join, the
database URL and its redacted form, the clock and the user a decision is recorded under."""

from __future__ import annotations

import datetime as dt
import os

import sqlalchemy as sa

from plants_mlops import contracts

DEFAULT_DB_URL = contracts.DEFAULT_DB_URL

metadata = sa.MetaData()


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def resolve_url(url: str | None = None) -> str:
    """The database URL: the argument, else ``PLANTS_DB_URL``, else the SQLite default."""
    return url or os.environ.get("PLANTS_DB_URL") or DEFAULT_DB_URL


def redact(url: str) -> str:
    """The database URL with its password hidden, for logs and messages."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparseable database URL>"


def current_user() -> str:
    """Who a decision is recorded under: ``PLANTS_USER``, else the login name."""
    import getpass

    try:
        return os.environ.get("PLANTS_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
