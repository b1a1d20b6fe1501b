"""Monitoring nodes: current window, reference, Evidently report, verdict, trigger.

The reference is a split the champion was not fit on (``reference.split``, the validation
split by default) as the served model sees it: the image statistics
formatting computed (``dataset_index``) plus the champion's predictions and penultimate
embeddings on the same fmt images. The current window is what the API logged: the same
statistics (computed on the same ``square_resize``d image), predictions and embeddings.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plants_mlops.params import Embeddings, MonitoringParams, parse

log = logging.getLogger(__name__)

EMBEDDING_NAME = "embedding"
REPEATED = "repeated"  # the window's column: an image already in it, judged once
PREDICTION_COLUMNS = ("label", "confidence")
# Whether the served model's OOD detector flagged the request (model/ood.py); absent or
# null for predictions of a model without one.
OOD_COLUMN = "out_of_distribution"


def _embedding_columns(dim: int) -> list[str]:
    return [f"emb_{i:04d}" for i in range(dim)]


def _expand_embeddings(frame: pd.DataFrame) -> pd.DataFrame:
    """``embedding`` (arrays) -> one float column per dimension (Evidently's layout)."""
    if frame.empty:
        return frame
    matrix = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
    emb = pd.DataFrame(matrix, columns=_embedding_columns(matrix.shape[1]), index=frame.index)
    return pd.concat([frame.drop(columns=["embedding"]), emb], axis=1)


def select_current_window(prediction_log: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The predictions monitoring judges: last ``window.hours``, newest ``window.last_n``,
    optionally one model version."""
    p = parse(MonitoringParams, params, "monitoring")
    window = p.window
    stat_columns = list(p.stat_columns)
    columns = ["request_id", "created_at", "model_version", *PREDICTION_COLUMNS, *stat_columns]
    if prediction_log.empty:
        log.warning("the prediction log is empty: nothing to monitor yet")
        return pd.DataFrame(columns=columns)
    frame = prediction_log
    if window.hours:
        since = datetime.now(UTC) - timedelta(hours=window.hours)
        frame = frame[frame["created_at"] >= since]
    if window.model_version not in (None, ""):
        frame = frame[frame["model_version"].astype(str) == str(window.model_version)]
    if window.last_n:
        frame = frame.tail(window.last_n)
    extra = [OOD_COLUMN] if OOD_COLUMN in frame.columns else []
    frame = frame[[*columns, *extra, "embedding"]].reset_index(drop=True)
    # The same photo predicted again (a client's retry, a second model version with the
    # same embedding: float on the same backbone, or int8 calibrated on the same images)
    # has the same embedding: marked, so the drift tests see each image once.
    emb_bytes = frame["embedding"].map(lambda e: np.asarray(e, dtype=np.float32).tobytes())
    frame[REPEATED] = emb_bytes.duplicated().to_numpy()
    log.info(
        "current window: %d predictions (of %d logged), %d of them repeats of an image "
        "already in the window",
        len(frame),
        len(prediction_log),
        int(frame[REPEATED].sum()),
    )
    return _expand_embeddings(frame)


def build_reference(
    dataset_index: pd.DataFrame, fmt_images: dict[str, Any], champion, params: dict[str, Any]
) -> pd.DataFrame:
    """The reference: stats from the index + the champion's view of the same images."""
    p = parse(MonitoringParams, params, "monitoring")
    split, max_rows = p.reference.split, p.reference.max_rows
    rows = dataset_index[dataset_index["split"] == split]
    if max_rows and len(rows) > max_rows:
        rows = rows.sample(max_rows, random_state=0)
    rows = rows[rows["image_key"].isin(fmt_images.keys())]
    if rows.empty:
        raise ValueError(f"no {split!r} images in dataset_index/fmt_images: run the data pipeline")
    inputs, keep = [], []
    for idx, key in zip(rows.index, rows["image_key"], strict=True):
        img = fmt_images[key]()
        x, _ = champion.preprocess(img.convert("RGB"))
        inputs.append(x)
        keep.append(idx)
    probs, embs, flags = [], [], []
    for start in range(0, len(inputs), 64):
        out = champion.run(np.stack(inputs[start : start + 64]))
        probs.append(out.probabilities)
        embs.append(out.embeddings)
        flags.append(out.out_of_distribution)
    probabilities = np.concatenate(probs)
    labels = np.asarray(champion.meta.labels)
    frame = rows.loc[keep, ["image_key", *p.stat_columns]].reset_index(drop=True)
    frame["label"] = labels[probabilities.argmax(axis=1)]
    frame["confidence"] = probabilities.max(axis=1)
    frame["model_version"] = str(champion.version)
    frame["embedding"] = list(np.concatenate(embs))
    if all(f is not None for f in flags):  # the champion carries an OOD detector
        frame[OOD_COLUMN] = np.concatenate(flags)
    log.info(
        "reference: %d %s images embedded by %s v%s",
        len(frame),
        split,
        champion.name,
        champion.version,
    )
    return _expand_embeddings(frame)


def _embedding_method(cfg: Embeddings):
    from evidently.legacy.metrics.data_drift import embedding_drift_methods as m

    name = cfg.method
    kwargs: dict[str, Any] = {}
    if cfg.threshold is not None and name != "ratio":
        kwargs["threshold"] = cfg.threshold
    if name in ("model", "mmd", "distance") and cfg.bootstrap is not None:
        kwargs["bootstrap"] = cfg.bootstrap
    if name in ("model", "mmd", "ratio") and cfg.pca_components:
        kwargs["pca_components"] = cfg.pca_components
    factories = {"model": m.model, "mmd": m.mmd, "distance": m.distance, "ratio": m.ratio}
    return factories[name](**kwargs)


def _insufficient(current: pd.DataFrame, params: MonitoringParams) -> str | None:
    need = params.min_current_rows
    if len(current) < need:
        return (
            f"only {len(current)} distinct images in the current window; monitoring needs at "
            f"least {need} (monitoring.min_current_rows)"
        )
    return None


def drift_report(
    current: pd.DataFrame, reference: pd.DataFrame, params: dict[str, Any]
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Evidently report (HTML + JSON) and a summary of what drifted, over the window's
    distinct images (repeats dropped: duplicate rows make drift tests see the same photo
    on both sides of their own splits, a false alarm)."""
    p = parse(MonitoringParams, params, "monitoring")
    repeated = (
        current[REPEATED].to_numpy(bool) if REPEATED in current else np.zeros(len(current), bool)
    )
    current = current[~repeated]
    counts = {
        "n_current": len(current),
        "n_repeated": int(repeated.sum()),
        "n_reference": len(reference),
    }
    reason = _insufficient(current, p)
    if reason:
        log.warning("skipping the drift report: %s", reason)
        html = f"<!doctype html><html><body><h1>No drift report</h1><p>{reason}</p></body></html>"
        return html, {"skipped": reason}, {"skipped": reason, **counts}

    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.presets import DataDriftPreset

    stat_columns = list(p.stat_columns)
    emb_cols = [c for c in reference.columns if c.startswith("emb_")]
    if [c for c in current.columns if c.startswith("emb_")] != emb_cols:
        raise ValueError(
            "current and reference embeddings differ in size: the window holds "
            "predictions of another model; set monitoring.window.model_version"
        )
    definition = DataDefinition(
        numerical_columns=[*stat_columns, "confidence"],
        categorical_columns=["label"],
        embeddings={EMBEDDING_NAME: emb_cols},
    )
    keep = [*stat_columns, *PREDICTION_COLUMNS, *emb_cols]
    cur_ds = Dataset.from_pandas(current[keep].copy(), data_definition=definition)
    ref_ds = Dataset.from_pandas(reference[keep].copy(), data_definition=definition)
    method = _embedding_method(p.embeddings)
    stat_kwargs = {
        k: v for k, v in (("method", p.stat_test), ("threshold", p.stat_threshold)) if v is not None
    }
    report = Report(
        [
            DataDriftPreset(columns=stat_columns, drift_share=p.drift_share, **stat_kwargs),
            EmbeddingsDrift(embeddings_name=EMBEDDING_NAME, drift_method=method),
            ValueDrift(column="label"),
            ValueDrift(column="confidence"),
        ],
        include_tests=True,
    )
    snapshot = report.run(cur_ds, ref_ds)  # current first, then reference
    doc = snapshot.dict()
    # The embeddings verdict: the same method object Evidently ran, asked for its boolean.
    emb_score, emb_drift, emb_method = method(current[emb_cols].copy(), reference[emb_cols].copy())
    summary = {**counts, **_summarise(doc, stat_columns)}
    # The predicted label over all K classes: a chi-square test of homogeneity (Evidently
    # picks a z-test or chi-square by the number of values it happens to see).
    summary["prediction_drift"]["label"] = label_drift(current["label"], reference["label"])
    summary["ood"] = ood_shares(current, reference)
    summary["embeddings"] = {
        "method": emb_method,
        "score": float(emb_score),
        "drift": bool(emb_drift),
    }
    return snapshot.get_html_str(as_iframe=False), doc, summary


LABEL_DRIFT_THRESHOLD = 0.05  # p-value below which the predicted-label shares drifted


def label_drift(current: pd.Series, reference: pd.Series) -> dict[str, Any]:
    """Chi-square test of homogeneity of the predicted labels' counts, current window vs
    reference, over every label either predicted (a label neither predicted carries no
    information). For two labels this is the two-proportion z-test (chi2 = z^2). Score =
    the p-value; drift when it is below ``LABEL_DRIFT_THRESHOLD``."""
    from scipy.stats import chi2_contingency

    labels = sorted(set(current) | set(reference))
    cur = current.value_counts().reindex(labels, fill_value=0)
    ref = reference.value_counts().reindex(labels, fill_value=0)
    shares = {
        "current_shares": {k: round(float(v) / max(len(current), 1), 4) for k, v in cur.items()},
        "reference_shares": {
            k: round(float(v) / max(len(reference), 1), 4) for k, v in ref.items()
        },
    }
    if len(labels) < 2 or not len(current) or not len(reference):
        p_value = 1.0  # one label everywhere (or no rows): nothing moved
    else:
        table = np.array([cur.to_numpy(), ref.to_numpy()])
        p_value = float(chi2_contingency(table, correction=False).pvalue)
    return {
        "method": "chisquare",
        "score": p_value,
        "threshold": LABEL_DRIFT_THRESHOLD,
        "drift": p_value < LABEL_DRIFT_THRESHOLD,
        **shares,
    }


def ood_shares(current: pd.DataFrame, reference: pd.DataFrame) -> dict[str, Any] | None:
    """Share of the window's predictions flagged out of distribution against the share of
    the reference (the champion's own rate on unseen in-distribution images, ~5 % by its
    threshold); None when either side has no flags (a model without a detector)."""
    shares = {}
    for name, frame in (("current", current), ("reference", reference)):
        flags = frame[OOD_COLUMN].dropna() if OOD_COLUMN in frame.columns else pd.Series([])
        if flags.empty:
            return None
        shares[name] = (float(flags.astype(bool).mean()), len(flags))
    return {
        "current_share": shares["current"][0],
        "current_rows": shares["current"][1],
        "reference_share": shares["reference"][0],
        "reference_rows": shares["reference"][1],
        "rise": shares["current"][0] - shares["reference"][0],
    }


def _summarise(doc: dict[str, Any], stat_columns: list[str]) -> dict[str, Any]:
    failed = {
        t["metric_config"]["metric_id"] for t in doc.get("tests", []) if t.get("status") == "FAIL"
    }
    columns: dict[str, dict[str, Any]] = {}
    share = None
    dataset_drift = False
    for metric in doc["metrics"]:
        cfg = metric.get("config", {})
        kind = cfg.get("type", "")
        if kind.endswith("ValueDrift"):
            columns[cfg["column"]] = {
                "method": cfg.get("method"),
                "score": metric["value"],
                "threshold": cfg.get("threshold"),
                "drift": metric["id"] in failed,
            }
        elif kind.endswith("DriftedColumnsCount"):
            share = metric["value"]["share"]
            dataset_drift = metric["id"] in failed
    stats = {c: columns[c] for c in stat_columns if c in columns}
    return {
        "data_drift": {"share_drifted": share, "drift": bool(dataset_drift), "columns": stats},
        "prediction_drift": {c: columns[c] for c in PREDICTION_COLUMNS if c in columns},
    }


def decide_drift(summary: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """One verdict: drift = dataset drift on image stats or embeddings drift (or, when
    configured, prediction drift)."""
    p = parse(MonitoringParams, params, "monitoring")
    now = datetime.now(UTC).isoformat()
    if "skipped" in summary:
        return {
            "status": "insufficient_data",
            "drift": False,
            "reasons": [summary["skipped"]],
            "at": now,
            **{k: summary[k] for k in ("n_current", "n_reference")},
            "n_repeated": summary.get("n_repeated", 0),
        }
    reasons = []
    data = summary["data_drift"]
    if data["drift"]:
        drifted = [c for c, v in data["columns"].items() if v["drift"]]
        reasons.append(
            f"image statistics drifted: {', '.join(drifted)} "
            f"(share {data['share_drifted']:.2f} >= {p.drift_share})"
        )
    emb = summary["embeddings"]
    if emb["drift"]:
        reasons.append(f"embeddings drifted ({emb['method']} score {emb['score']:.3f})")
    pred_drifted = [c for c, v in summary["prediction_drift"].items() if v["drift"]]
    use_pred = p.verdict.use_prediction_drift
    if pred_drifted and use_pred:
        reasons.append(f"predictions drifted: {', '.join(pred_drifted)}")
    ood = summary.get("ood")
    if ood is not None and ood["rise"] > p.verdict.max_ood_share_rise:
        reasons.append(
            f"out-of-distribution share rose to {ood['current_share']:.2f} "
            f"(reference {ood['reference_share']:.2f}, allowed rise "
            f"{p.verdict.max_ood_share_rise:.2f})"
        )
    drift = bool(reasons)
    verdict = {
        "status": "drift" if drift else "no_drift",
        "drift": drift,
        "reasons": reasons,
        "at": now,
        "n_current": summary["n_current"],
        "n_repeated": summary.get("n_repeated", 0),
        "n_reference": summary["n_reference"],
        "data_drift": data,
        "embeddings": emb,
        "prediction_drift": summary["prediction_drift"],
        "prediction_drift_in_verdict": use_pred,
        "ood": ood,
    }
    log.log(
        logging.WARNING if drift else logging.INFO,
        "monitoring verdict: %s %s",
        verdict["status"],
        "; ".join(reasons),
    )
    return verdict


def trigger_retraining(
    verdict: dict[str, Any], params: dict[str, Any], env: str = ""
) -> dict[str, Any]:
    """Start the retraining command in the background when drift is found and enabled.
    ``env``: this run's Kedro environment (``kedro_env``, "" for none): the default command
    retrains this task (``pipeline run --env ENV``), not the base one."""
    import shlex

    from plants_mlops.retrain import RetrainRunner, default_retrain_command

    cfg = parse(MonitoringParams, params, "monitoring").retrain
    enabled = cfg.enabled
    record = {
        "drift": verdict["drift"],
        "enabled": enabled,
        "started": False,
        "at": datetime.now(UTC).isoformat(),
    }
    if not verdict["drift"]:
        record["detail"] = "no drift: nothing to do"
        return record
    command = cfg.command
    argv = (
        shlex.split(command)
        if isinstance(command, str) and command
        else (list(command) if command else default_retrain_command(env or None))
    )
    record["command"] = argv
    if not enabled:
        record["detail"] = (
            "drift found; retraining is off (monitoring.retrain.enabled / "
            "PLANTS_MONITORING_RETRAIN=true)"
        )
        return record
    # One retraining at a time with the API's (the guard is in the PLANTS_DB_URL database).
    started, run, detail = RetrainRunner(argv, Path(cfg.log_dir)).trigger(
        "; ".join(verdict["reasons"])
    )
    record.update(started=started, detail=detail, **run)
    return record


def summarize_monitoring(verdict: dict[str, Any], trigger: dict[str, Any]) -> dict[str, Any]:
    """The stage summary: the verdict, window sizes, drift scores, whether retraining began."""
    from plants_mlops.summaries import StageSummary

    metrics: dict[str, float] = {}
    if "embeddings" in verdict:
        metrics["embeddings_drift_score"] = float(verdict["embeddings"]["score"])
    if verdict.get("ood"):
        metrics["ood_share"] = float(verdict["ood"]["current_share"])
        metrics["ood_reference_share"] = float(verdict["ood"]["reference_share"])
    share = (verdict.get("data_drift") or {}).get("share_drifted")
    if share is not None:
        metrics["share_drifted_columns"] = float(share)
    return StageSummary(
        stage="monitoring",
        counts={
            "current_rows": int(verdict["n_current"]),
            "reference_rows": int(verdict["n_reference"]),
            "retraining_started": int(bool(trigger.get("started"))),
        },
        metrics=metrics,
        verdict=verdict["status"],
        outputs=["monitoring_report_html", "monitoring_verdict"],
    ).to_json()
