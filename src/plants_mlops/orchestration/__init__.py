"""ZenML orchestration of the Kedro pipelines (one ZenML step per Kedro pipeline).

Import ``plants_mlops.orchestration.pipeline`` for :func:`run_pipeline` (it imports ZenML);
``plants_mlops.orchestration.stacks`` registers the ``local``, ``minio`` and ``gpu`` stacks.
"""
