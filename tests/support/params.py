"""Stage parameters for tests: the project's own YAML plus a test's overrides.

A test that calls a node directly passes ``stage_params("ingestion", concurrency=2)``
instead of a hand-written partial dict, so it runs on the defaults the project ships
(``conf/base``, ``${...}`` resolved by Kedro's config loader) and says only what it changes.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

CONF = Path(__file__).resolve().parents[2] / "conf"


@cache
def _base_parameters() -> dict[str, Any]:
    from kedro.config import OmegaConfigLoader

    from plants_mlops.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(
        conf_source=str(CONF), **{**CONFIG_LOADER_ARGS, "default_run_env": "base"}
    )
    return loader["parameters"]


def base_parameters() -> dict[str, Any]:
    """Every ``params:<stage>`` block of conf/base, interpolations resolved (a copy)."""
    return copy.deepcopy(_base_parameters())


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in: dicts merge key by key, anything else replaces.
    A dotted key (``"optimizer.lr"``) addresses a nested one."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        head, dot, rest = key.partition(".")
        if dot:
            value, key = {rest: value}, head
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_params(stage: str, **overrides: Any) -> dict[str, Any]:
    """``params:<stage>`` as conf/base sets it, with ``overrides`` deep-merged in."""
    return deep_merge(_base_parameters()[stage], overrides)


def task_params(**overrides: Any) -> dict[str, Any]:
    """``params:task`` of the shipped task (conf/base/task.yml), with ``overrides``."""
    return deep_merge(_base_parameters()["task"], overrides)


def base_labels() -> tuple[str, ...]:
    """The shipped task's labels, in class order (conf/base/task.yml)."""
    return tuple(_base_parameters()["task"]["labels"])
