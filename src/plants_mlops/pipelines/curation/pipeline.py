from kedro.pipeline import Pipeline, node

from plants_mlops.hooks import RUN_ENV
from plants_mlops.pipelines.curation.nodes import (
    compute_features,
    find_issues,
    render_review,
    summarize_curation,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            node(
                compute_features,
                inputs=["fmt_images", "dataset_index", "params:curation"],
                outputs="curation_features",
                name="curation_features",
            ),
            node(
                find_issues,
                inputs=[
                    "curation_features",
                    "dataset_index",
                    "params:curation",
                    "params:task",
                    "fmt_images",
                ],
                outputs=["curation_queue", "curation_near_duplicates", "curation_report"],
                name="curation_find_issues",
            ),
            node(
                render_review,
                inputs=[
                    "curation_queue",
                    "fmt_images",
                    "curation_report",
                    "params:curation",
                    RUN_ENV,
                ],
                outputs="curation_review_html",
                name="curation_review_page",
            ),
            node(
                summarize_curation,
                inputs=["curation_report", "dataset_fingerprint"],
                outputs="curation_summary",
                name="summarize_curation",
            ),
        ]
    )
