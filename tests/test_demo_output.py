"""What `make demo` prints: its own progress lines on the console, every log in the file."""

from __future__ import annotations

import contextlib
import io
import logging
import sys

import pytest

from plants_mlops.commands import demo
from plants_mlops.orchestration.summaries import StepSummary, publish


@pytest.fixture
def demo_logging(tmp_path):
    # ZenML's handlers on the root logger, as `import zenml` leaves them at a demo's start
    # (called explicitly: an earlier test in this process, a Kedro session say, may have
    # reset the root logger since zenml was first imported).
    from zenml.logger import init_logging

    init_logging()  # idempotent: ZenML removes its own handlers before adding them
    console = io.StringIO()
    state = demo.setup_logging(tmp_path / "demo.log", console=console)
    yield state, console
    state.close()


def _file(state) -> str:
    for handler in state.added:
        handler.flush()
    return state.path.read_text()


def test_kedro_and_zenml_records_reach_the_file_and_not_the_console(demo_logging, capsys):
    state, console = demo_logging
    logging.getLogger("kedro.runner.sequential_runner").info("Completed 3 out of 3 tasks")
    logging.getLogger("zenml.orchestrators.step_launcher").info("Step ingestion has started.")
    text = _file(state)
    assert "Completed 3 out of 3 tasks" in text
    assert "Step ingestion has started." in text
    assert console.getvalue() == ""
    out, err = capsys.readouterr()
    assert "Step ingestion" not in out + err  # ZenML's own console handler is off
    names = [type(h).__name__ for h in logging.getLogger().handlers]
    assert "ZenMLConsoleHandler" not in names and "ZenMLLoggingHandler" in names


def test_progress_lines_and_epochs_reach_both(demo_logging):
    state, console = demo_logging
    demo.log.info("[1/7] ingestion ... done (400 rows) in 2.0 s")
    logging.getLogger(demo.EPOCH_LOGGER).info("epoch %d/%d: val_f1=%.4f", 1, 12, 0.9)
    logging.getLogger(demo.EPOCH_LOGGER).info("building the model")  # not an epoch line
    logging.getLogger(demo.EPOCH_LOGGER).info("linear probe: C=%g chosen", 0.3)
    demo.detail.info("dandelion.jpg true=dandelion predicted=dandelion")
    shown = console.getvalue().splitlines()
    assert shown == [
        "[1/7] ingestion ... done (400 rows) in 2.0 s",
        "      epoch 1/12: val_f1=0.9000",
        "      linear probe: C=0.3 chosen",
    ]
    text = _file(state)
    assert "[1/7] ingestion" in text and "epoch 1/12" in text
    assert "building the model" in text and "predicted=dandelion" in text


def _summary(stage: str, **fields) -> StepSummary:
    return StepSummary(stage=stage, env="local", **{"duration_s": 1.0, **fields})


def test_a_published_stage_summary_becomes_a_stage_line(demo_logging):
    _, console = demo_logging
    publish(_summary("validation", duration_s=3.14, verdict="passed", counts={"checks": 12}))
    assert console.getvalue().endswith("[4/8] validation ... passed (12 checks) in 3.1 s\n")
    publish(
        _summary(
            "evaluation",
            duration_s=2.0,
            metrics={"test_f1_macro": 0.91234, "test_accuracy": 0.9},
            champion_version="3",
        )
    )
    assert console.getvalue().endswith(
        "[6/8] evaluation ... done (test F1 0.9123, accuracy 0.9000, champion 3) in 2.0 s\n"
    )


def test_the_console_reads_typed_summaries_not_the_shape_of_a_log_call(demo_logging):
    """A step's log line is for the file; only a published summary makes a stage line."""
    state, console = demo_logging
    meta = {"stage": "ingestion", "duration_s": 1.0, "count_rows": 40}
    logging.getLogger("plants_mlops.orchestration.steps").info("%s: %s", "ingestion", meta)
    assert console.getvalue() == ""
    assert "ingestion: {'stage': 'ingestion'" in _file(state)
    state.close()
    publish(_summary("ingestion"))  # after close: nobody listens any more
    assert console.getvalue() == ""


def test_close_puts_the_root_logger_back(tmp_path):
    root = logging.getLogger()
    before = list(root.handlers)
    demo.setup_logging(tmp_path / "demo.log", console=io.StringIO()).close()
    assert root.handlers == before


def test_a_step_zenml_took_from_its_cache_gets_its_line_in_order(demo_logging):
    state, console = demo_logging
    for stage in ("ingestion", "formatting", "curation", "validation"):
        publish(_summary(stage))
    publish(_summary("evaluation", duration_s=2.0))
    state.progress.catch_up()
    lines = console.getvalue().splitlines()
    assert [ln.split(" ... ")[0] for ln in lines] == [
        f"[{i}/8] {stage}" for i, stage in enumerate(demo.STAGES, 1)
    ]
    assert lines[4] == "[5/8] training ... cached"
    assert lines[7] == "[8/8] registry ... cached"


def test_what_a_library_prints_during_the_run_goes_to_the_file(demo_logging, capsys):
    state, console = demo_logging
    with contextlib.redirect_stderr(demo._LogStream(logging.WARNING)):
        print("Created version '1' of model 'plants-classifier'.", file=sys.stderr)
    assert "Created version '1'" in _file(state)
    assert console.getvalue() == "" and capsys.readouterr().err == ""


def test_a_long_steps_progress_lines_reach_the_console(demo_logging, monkeypatch):
    """A long step (curation's embeddings) is not minutes of silence on the console."""
    from plants_mlops import progress

    _, console = demo_logging
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    steps = progress.Progress(4, "curation embeddings", logging.getLogger("plants_mlops.x"))
    steps.update(2)
    logging.getLogger("plants_mlops.x").info("not a progress line")
    steps.close()
    assert console.getvalue().splitlines()[0].startswith("      curation embeddings: 2/4 img")
    assert "not a progress line" not in console.getvalue()


def test_a_refused_first_model_stops_the_demo_with_the_reason_not_a_wait(tmp_path):
    """The gate refused the only model (e.g. latency on a saturated machine): the demo says
    why and how to serve it anyway, instead of waiting minutes for an API with no model."""
    decision = tmp_path / "registry_decision.json"
    decision.write_text(
        '{"refused_because": ["latency: batch-1 ONNX Runtime p50 55.29 ms > limit 15.00 ms '
        '(needs <= 15.00 ms)"]}'
    )
    refused = {"registry": {"verdict": "fail", "model_version": "1"}, "evaluation": {}}
    reason = demo.nothing_to_serve(refused, decision)
    assert "latency: batch-1 ONNX Runtime p50 55.29 ms" in reason
    assert "plants-mlops registry promote 1 --force --reason TEXT" in reason
    passed = {"registry": {"verdict": "pass", "model_version": "2"}}
    assert demo.nothing_to_serve(passed, decision) is None
    kept = {**refused, "evaluation": {"champion_version": "1"}}  # the old champion serves
    assert demo.nothing_to_serve(kept, decision) is None


def test_a_stage_run_in_process_publishes_its_summary_to_the_console(data_project, tmp_path):
    """The real path (plain Kedro in the demo's --kedro mode, a ZenML step otherwise):
    ``run_stage`` publishes the stage's typed summary and the console shows its line."""
    from plants_mlops.orchestration.kedro_stage import run_stage

    console = io.StringIO()
    state = demo.setup_logging(tmp_path / "demo.log", console=console)
    try:
        summary = run_stage("validation", data_project.path, "local").summary
    finally:
        state.close()
    checks = summary.counts["checks"]
    assert checks > 0
    assert (
        console.getvalue()
        .splitlines()[-1]
        .startswith(f"[4/8] validation ... {summary.verdict} ({checks} checks) in ")
    )
