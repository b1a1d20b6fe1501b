from kedro.pipeline import Pipeline, node

from plants_mlops.hooks import RUN_ENV
from plants_mlops.pipelines.monitoring.metrics import verdict_metrics
from plants_mlops.pipelines.monitoring.nodes import (
    build_reference,
    decide_drift,
    drift_report,
    select_current_window,
    summarize_monitoring,
    trigger_retraining,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                select_current_window,
                inputs=["prediction_log", "params:monitoring"],
                outputs="monitoring_current",
                name="select_current_window",
            ),
            node(
                build_reference,
                inputs=["dataset_index", "fmt_images", "monitoring_champion", "params:monitoring"],
                outputs="monitoring_reference",
                name="build_reference",
            ),
            node(
                drift_report,
                inputs=["monitoring_current", "monitoring_reference", "params:monitoring"],
                outputs=["monitoring_report_html", "monitoring_report_json", "monitoring_drift"],
                name="drift_report",
            ),
            node(
                decide_drift,
                inputs=["monitoring_drift", "params:monitoring"],
                outputs="monitoring_verdict",
                name="decide_drift",
            ),
            node(
                trigger_retraining,
                inputs=["monitoring_verdict", "params:monitoring", RUN_ENV],
                outputs="monitoring_retrain_trigger",
                name="trigger_retraining",
            ),
            node(
                summarize_monitoring,
                inputs=["monitoring_verdict", "monitoring_retrain_trigger"],
                outputs="monitoring_summary",
                name="summarize_monitoring",
            ),
            node(
                verdict_metrics,
                inputs="monitoring_verdict",
                outputs="monitoring_metrics",
                name="verdict_metrics",
            ),
        ]
    )
