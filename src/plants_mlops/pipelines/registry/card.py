"""Registry node: the model card of the version just registered (model/card.py), written
to 08_reporting, logged to the version's MLflow run and linked from the version's tags
(``model_card``, ``model_card.md``), so ``registry list`` and the API's ``GET /model``
point at it."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.model import tracking
from plants_mlops.params import ModelCardParams, RegistryParams, TaskParams, parse

log = logging.getLogger(__name__)

CARD_DIR = "model_card"  # in the version's MLflow run
TAG_HTML, TAG_MD = "model_card", "model_card.md"


def write_model_card(
    registry_decision: dict,
    training_report: dict,
    evaluation_report: dict,
    serving_model: bytes,
    serving_meta: dict,
    dataset_index: pd.DataFrame,
    fmt_images: dict,
    dataset_fingerprint: dict,
    formatting_report: dict,
    data_decisions: pd.DataFrame,
    behaviour_report: dict | None,
    card_params: dict[str, Any],
    registry_params: dict[str, Any],
    task_params: dict[str, Any],
) -> tuple[str, str, dict]:
    """(markdown, HTML, headline figures) of the registered version's card. The curation
    decisions it lists are those the formatting run of its dataset applied
    (``formatting_report.decisions_applied``); ``data_decisions`` (in force now) only
    counts the ones that wait for a formatting run."""
    from plants_mlops.model import card
    from plants_mlops.model.artifact import ServingArtifact
    from plants_mlops.model.data import load_subset

    p = parse(ModelCardParams, card_params, "model_card")
    rp = parse(RegistryParams, registry_params, "registry")
    task = parse(TaskParams, task_params, "task")
    name, version = registry_decision["model_name"], str(registry_decision["model_version"])
    cl = tracking.client(tracking.tracking_uri(rp.mlflow.tracking_uri))
    tags = dict(cl.get_model_version(name, version).tags or {})
    labels = list(serving_meta["labels"])
    split = load_subset(dataset_index, fmt_images, labels, ("test",), p.subset)["test"]
    model = ServingArtifact.from_bytes(serving_model, serving_meta, threads=1)
    y_pred = model.predict_images(split.images).probabilities.argmax(axis=1)
    rows = dataset_index.set_index("image_key").loc[split.keys].reset_index()
    built = card.build(
        name=name,
        version=version,
        tags=tags,
        decision=registry_decision,
        training_report=training_report,
        evaluation_report=evaluation_report,
        serving_meta=serving_meta,
        fingerprint=dataset_fingerprint,
        test=rows,
        y_true=np.asarray(split.labels),
        y_pred=y_pred,
        formatting_report=formatting_report,
        decisions=data_decisions,
        behaviour=behaviour_report,
        task=task,
        p=p,
    )
    md, page = card.markdown(built), card.html(built)
    run_id = training_report["mlflow_run_id"]
    with tracking.open_run(cl, name, run_id=run_id) as run:
        run.log_text(md, f"{CARD_DIR}/model_card.md")
        run.log_text(page, f"{CARD_DIR}/model_card.html")
        run.log_dict(built.figures, f"{CARD_DIR}/model_card.json")
    base = cl.get_run(run_id).info.artifact_uri.rstrip("/")
    links = {
        TAG_HTML: f"{base}/{CARD_DIR}/model_card.html",
        TAG_MD: f"{base}/{CARD_DIR}/model_card.md",
    }
    for key, value in links.items():
        cl.set_model_version_tag(name, version, key, value)
    log.info("model card of %s version %s: %s", name, version, links[TAG_HTML])
    return md, page, {**built.figures, "links": links}
