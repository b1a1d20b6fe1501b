"""The project's SQL database: ``plants_data`` (one row per image URL), ``data_decisions``
(curation decisions) and ``feedback_candidates`` (feedback waiting for a person), one module
per table, plus the engine and its in-place migrations (``engine.py``).

Works on SQLite (the embedded default, ``sqlite:///data/plants.db``), MySQL/MariaDB and
PostgreSQL through SQLAlchemy 2 table definitions. The URL comes from, in order: an explicit
argument, ``PLANTS_DB_URL``, the default. ``from plants_mlops import db`` gives the whole
public surface below.
"""

from plants_mlops.db.base import (
    DEFAULT_DB_URL,
    current_user,
    metadata,
    redact,
    resolve_url,
    utcnow,
)
from plants_mlops.db.decisions import (
    DECISION_ACTIONS,
    data_decisions,
    decision_history,
    decisions_in_force,
    record_decision,
)
from plants_mlops.db.engine import (
    SCHEMA_VERSION,
    DamagedStoreError,
    add_missing_columns,
    check_integrity,
    make_engine,
    migrate,
    schema_version,
)
from plants_mlops.db.feedback import (
    FEEDBACK_STATES,
    FeedbackDecided,
    decide_feedback,
    feedback_candidates,
    file_feedback,
    list_feedback,
)
from plants_mlops.db.plants_data import (
    COLUMNS,
    MAX_URL_LENGTH,
    STATUSES,
    TABLE_NAME,
    UPDATABLE,
    UPSERT_SLICE,
    SeedReport,
    ensure_seeded,
    load_rows,
    manifest_text,
    plants_data,
    read_manifest,
    redact_url,
    seed,
    status_summary,
    upsert_rows,
)

__all__ = [
    "COLUMNS",
    "DECISION_ACTIONS",
    "DEFAULT_DB_URL",
    "DamagedStoreError",
    "FEEDBACK_STATES",
    "FeedbackDecided",
    "MAX_URL_LENGTH",
    "SCHEMA_VERSION",
    "STATUSES",
    "TABLE_NAME",
    "UPDATABLE",
    "UPSERT_SLICE",
    "SeedReport",
    "add_missing_columns",
    "check_integrity",
    "current_user",
    "data_decisions",
    "decide_feedback",
    "decision_history",
    "decisions_in_force",
    "ensure_seeded",
    "feedback_candidates",
    "file_feedback",
    "list_feedback",
    "load_rows",
    "make_engine",
    "manifest_text",
    "metadata",
    "migrate",
    "plants_data",
    "read_manifest",
    "record_decision",
    "redact",
    "redact_url",
    "resolve_url",
    "schema_version",
    "seed",
    "status_summary",
    "upsert_rows",
    "utcnow",
]
