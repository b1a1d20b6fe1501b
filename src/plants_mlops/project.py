"""The Kedro project a command runs in, and the ZenML state that belongs to it.

ZenML keeps its store (stacks, runs, secrets) and its local artifact store under one folder,
``ZENML_CONFIG_PATH``, per user by default (``~/.config/zenml``): two checkouts on one
machine would share it, and one checkout's `local` stack would log into the other's MLflow
store. Every ``plants-mlops`` command therefore points ZenML at ``<project>/data/zenml``
before ZenML is imported, unless ``ZENML_CONFIG_PATH`` is set already (a choice made on
purpose). ``foreign_store`` is the second guard: a run refuses a stack whose MLflow store
is a file of another project.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

# Where a project's ZenML store lives, relative to the project root (git-ignored, and
# removed with the rest of the data by `make clean-data`).
ZENML_HOME = Path("data") / "zenml"
# Stack label: the project a stack was registered from (`plants-mlops stack register`).
PROJECT_LABEL = "plants_mlops_project"


def is_project(path: Path) -> bool:
    """Whether ``path`` is the root of a Kedro project (``pyproject.toml`` + ``conf/``)."""
    return (path / "pyproject.toml").is_file() and (path / "conf").is_dir()


def use_project_zenml(project: Path) -> Path:
    """Set ``ZENML_CONFIG_PATH`` to the project's ZenML home unless it is set; the path used.

    Call before ZenML is imported (it reads the variable once)."""
    if not os.environ.get("ZENML_CONFIG_PATH"):
        os.environ["ZENML_CONFIG_PATH"] = str(project.resolve() / ZENML_HOME)
    return Path(os.environ["ZENML_CONFIG_PATH"])


def local_store_path(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` or ``file:`` MLflow tracking URI; None for a server."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":  # sqlite:///relative/path, sqlite:////absolute/path
        path = uri.removeprefix("sqlite:///")
        return Path(path).resolve() if path and path != uri else None
    if parsed.scheme in ("file", ""):
        return Path(parsed.path).resolve()
    return None


def foreign_store(project: Path, stack: str, uri: str, labels: dict[str, str]) -> str | None:
    """Why a run of ``project`` must not use this stack's MLflow store, or None when it may.

    A file store inside the project, or a tracking server, is fine; one outside it only when
    the stack was registered from this project (with ``MLFLOW_TRACKING_URI`` set on purpose).
    """
    path = local_store_path(uri)
    project = project.resolve()
    if path is None or path.is_relative_to(project):
        return None
    owner = labels.get(PROJECT_LABEL)
    if owner == str(project):
        return None
    return (
        f"the active ZenML stack `{stack}` logs to {path}, outside this project "
        f"(registered from {owner or 'another project'}); run `plants-mlops stack register "
        f"{stack}` here, or unset ZENML_CONFIG_PATH so this project uses its own ZenML "
        f"store ({ZENML_HOME}/)"
    )
