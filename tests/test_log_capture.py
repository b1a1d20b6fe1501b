"""The test suite's log capture survives Kedro's logging set-up.

Kedro applies its logging configuration with ``logging.config.dictConfig`` (the root
logger's handlers replaced) the first time ``kedro.framework.project`` is imported and the
first time the project's package is configured (``bootstrap_project``). pytest's ``caplog``
handler sits on the root logger, so a test whose Kedro session was its worker's first lost
its records: ``test_curation_rerun_reuses_the_embedding_cache`` failed whenever pytest-xdist
gave the shared data build (``built_data``, the worker's first session otherwise) to the
other worker. conftest.py configures Kedro's logging before any test runs."""

from __future__ import annotations

import logging


def test_kedro_logging_set_up_leaves_the_capture_in_place(caplog):
    from kedro.framework.project import configure_project

    with caplog.at_level(logging.INFO, logger="plants_mlops.test_log_capture"):
        configure_project("plants_mlops")  # what bootstrap_project does in every run
        logging.getLogger("plants_mlops.test_log_capture").info("still captured")
    assert "still captured" in caplog.text
