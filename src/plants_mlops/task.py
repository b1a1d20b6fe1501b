"""The task outside a Kedro run: ``conf/<env>/task.yml`` and the environment's globals read
the way ``kedro run --env ENV`` reads them, for the commands that run no pipeline
(``db seed``, ``data relabel``, ``serve``), and ``task init``, which writes a new task's
environment.

A task environment is ``conf/<name>/``: ``task.yml`` (labels, title, the edits that keep
a label, thresholds) and ``globals.yml`` (its data root, table, MLflow experiment and
registered model), loaded over ``conf/base`` like any Kedro environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plants_mlops.errors import UserFacingError
from plants_mlops.params import LABEL_PATTERN, TaskParams, parse

ENV_NAME = re.compile(r"[a-z][a-z0-9_-]{0,39}")
RESERVED_ENVS = ("base", "local", "minio")


@dataclass(frozen=True)
class TaskContext:
    """What a command outside a pipeline needs of a task environment."""

    env: str | None
    task: TaskParams
    db_url: str
    model_name: str
    experiment: str
    root: str
    # The MLflow store its registry stage uses when MLFLOW_TRACKING_URI is unset
    # (registry.mlflow.tracking_uri; None: the default sqlite:///data/mlflow.db).
    tracking_uri: str | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        return self.task.labels

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}@champion"


def _config(env: str | None, conf: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from kedro.config import OmegaConfigLoader

    from plants_mlops.settings import CONFIG_LOADER_ARGS

    if not conf.is_dir():
        raise UserFacingError(
            f"no {conf} folder in {Path.cwd()}: run plants-mlops in the project's root"
        )
    if env is not None and not (conf / env).is_dir():
        known = sorted(p.name for p in conf.iterdir() if p.is_dir() and p.name != "base")
        raise UserFacingError(
            f"no environment {env!r} in {conf} (known: {', '.join(known) or 'none'}); "
            f"`plants-mlops task init {env} --labels a,b` writes one"
        )
    loader = OmegaConfigLoader(
        conf_source=str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": env or "local"}
    )
    return loader["parameters"], loader["globals"]


def load(env: str | None = None, conf: Path | str = "conf") -> TaskContext:
    """The task of environment ``env`` (None: base + local, as ``kedro run`` without
    ``--env``), read from the project's ``conf`` folder."""
    params, glob = _config(env, Path(conf))
    return TaskContext(
        env=env,
        task=parse(TaskParams, params["task"], "task"),
        db_url=str(glob["db_url"]),
        model_name=str(glob["model_name"]),
        experiment=str(glob["experiment"]),
        root=str(glob["root"]),
        tracking_uri=((params.get("registry") or {}).get("mlflow") or {}).get("tracking_uri"),
    )


def parse_labels(text: str) -> tuple[str, ...]:
    """``a,b,c`` as labels (order kept), refused with the reason when not a task's labels."""
    labels = tuple(part.strip() for part in text.split(",") if part.strip())
    bad = [lab for lab in labels if not LABEL_PATTERN.fullmatch(lab)]
    if bad:
        raise UserFacingError(
            f"labels {bad} are not names of letters, digits, '_' or '-' (at most 64)"
        )
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise UserFacingError(f"a task needs two or more distinct labels, got {list(labels)}")
    return labels


def init_files(
    name: str,
    labels: tuple[str, ...],
    *,
    title: str | None = None,
    mirror_prefix: str | None = None,
    mirror_to: str | None = None,
) -> dict[str, str]:
    """The files of a new task environment ``conf/<name>/``, by relative path."""
    if not ENV_NAME.fullmatch(name) or name in RESERVED_ENVS:
        raise UserFacingError(
            f"task name {name!r}: lower-case letters, digits, '_' or '-', starting with a "
            f"letter, and not one of {', '.join(RESERVED_ENVS)}"
        )
    from plants_mlops.model.behaviour import EDITS  # the photo default: every edit

    title = title or f"{name}: {' / '.join(labels)}"
    label_list = ", ".join(labels)
    files = {
        "task.yml": (
            f"# The {name} task (docs/own-data.md). Run it with `--env {name}`.\n"
            "task:\n"
            f"  name: {name}\n"
            f"  title: {_yaml_str(title)}\n"
            f"  description: {_yaml_str(f'Upload an image; the model answers one of: {label_list}.')}\n"
            f"  labels: [{label_list}]\n"
            "  # Edits under which an image keeps its label: the behaviour step measures\n"
            "  # invariance under each and the registry gate requires it. The defaults fit\n"
            "  # photos; for digits, letters, text or anything with an up and a left, drop the\n"
            "  # turns and the mirror (a 6 turned is a 9). Known edits: docs/behaviour.md.\n"
            f"  label_preserving_edits: [{', '.join(EDITS)}]\n"
            "  # Photos a person labels at a glance, <label>/*.jpg under a folder of yours\n"
            "  # (e.g. samples/NAME/clear): the behaviour step's minimum functionality, which\n"
            "  # the registry gate requires; null: not measured.\n"
            "  clear_cases: null\n"
            "  # Data-dependent thresholds: the defaults fit photos; drawings, scans and\n"
            "  # small icons share more phash bits (lower max_distance for them).\n"
            "  near_duplicates:\n"
            "    max_distance: 8\n"
            "  class_balance:\n"
            "    min_images_per_class: 50\n"
            "    min_class_ratio: 0.5\n"
            "    split_tolerance: 0.07\n"
        ),
        "globals.yml": (
            f"# The {name} task's own data root, table, MLflow experiment and registered model.\n"
            f"root: data/{name}\n"
            "# A server database: give each task its own database (PLANTS_DB_URL names the\n"
            "# base task's).\n"
            f"db_url: sqlite:///data/{name}/plants.db\n"
            f"experiment: {name}-classifier\n"
            f"model_name: {name}-classifier\n"
            f"model_uri: models:/{name}-classifier@champion  # what its monitoring judges\n"
            "seed_shipped_manifest: false  # the shipped manifest is the base task's\n"
        ),
    }
    if mirror_prefix:
        files["parameters_ingestion.yml"] = (
            "# The manifest's URLs under `prefix` are read from `to` (a local folder or a\n"
            "# base URL); only the mirrors' own origins pass the private-address check.\n"
            "ingestion:\n"
            "  mirrors:\n"
            f"    - prefix: {_yaml_str(mirror_prefix)}\n"
            f"      to: {_yaml_str(mirror_to or '')}\n"
        )
    return files


def _yaml_str(text: str) -> str:
    import json

    return json.dumps(text)  # a JSON string is a YAML string


def init(conf: Path | str, name: str, labels: tuple[str, ...], **kwargs: Any) -> list[Path]:
    """Write ``conf/<name>/`` (refused when it exists); returns the files written."""
    files = init_files(name, labels, **kwargs)  # the name and labels checked first
    folder = Path(conf) / name
    if folder.exists():
        raise UserFacingError(f"{folder} exists: edit its task.yml, or choose another name")
    folder.mkdir(parents=True)
    written = []
    for rel, text in files.items():
        (folder / rel).write_text(text)
        written.append(folder / rel)
    load(name, conf)  # what was written loads and parses
    return written
