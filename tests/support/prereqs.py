"""One rule for a test's machine-level prerequisite (a Debian tool, a local server).

``scripts/test-prereqs.sh`` installs everything the suite uses. If a tool is still
missing, a developer's run skips the tests that need it, saying which tool; under
``CI=true`` the same absence fails the test: a skipped test in CI is a test that did not run.
"""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def missing(what: str, hint: str = "run scripts/test-prereqs.sh") -> None:
    """Skip (developer machine) or fail (CI) because ``what`` is not available."""
    message = f"prerequisite missing: {what} ({hint})"
    if in_ci():
        pytest.fail(message + "; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def need(command: str, hint: str = "run scripts/test-prereqs.sh") -> str:
    """The path of ``command`` on PATH, or skip/fail as :func:`missing` says."""
    path = shutil.which(command)
    if path is None:
        missing(f"`{command}` on PATH", hint)
    return path  # type: ignore[return-value]
