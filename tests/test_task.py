"""The task is configuration: a task file and its environment (``task init``), the labels
flowing from the table to the served model, and a K=4 task run end to end beside the
shipped one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os

import pytest
import yaml
from data_testlib import seed
from support import images
from support.params import base_labels, task_params
from support.serving import ADMIN_KEY

from plants_mlops import cli, task
from plants_mlops.contracts import STAGES
from plants_mlops.errors import UserFacingError

SHAPES = ("ant", "bee", "cat", "dog")


def test_task_init_writes_an_environment_the_stages_read(kedro_project, capsys):
    conf = kedro_project.path / "conf"
    rc = cli.main(
        [
            "task",
            "init",
            "shapes",
            "--labels",
            ",".join(SHAPES),
            "--title",
            "Which animal?",
            "--mirror",
            "https://img.example.org/shapes/=/srv/shapes",
            "--conf",
            str(conf),
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in (conf / "shapes").iterdir()) == [
        "globals.yml",
        "parameters_ingestion.yml",
        "task.yml",
    ]
    ctx = task.load("shapes", conf)
    assert ctx.labels == SHAPES and ctx.task.title == "Which animal?"
    assert (ctx.db_url, ctx.root) == ("sqlite:///data/shapes/plants.db", "data/shapes")
    assert ctx.model_name == ctx.experiment == "shapes-classifier"
    assert ctx.model_uri == "models:/shapes-classifier@champion"
    # the base task is untouched beside it
    base = task.load(None, conf)
    assert base.labels == base_labels() and base.model_name == "plants-classifier"
    from kedro.config import OmegaConfigLoader

    from plants_mlops.settings import CONFIG_LOADER_ARGS

    loader = OmegaConfigLoader(str(conf), **{**CONFIG_LOADER_ARGS, "default_run_env": "shapes"})
    params = loader["parameters"]
    assert params["task"]["labels"] == list(SHAPES)
    assert params["ingestion"]["mirrors"] == [
        {"prefix": "https://img.example.org/shapes/", "to": "/srv/shapes"}
    ]
    assert params["registry"]["model_name"] == params["training"]["mlflow"]["experiment"]
    assert params["task"]["class_balance"]["min_images_per_class"] == 50
    # the edits that keep a label: written with the photo defaults (the shipped task's)
    # and a comment saying when to change them
    assert params["task"]["label_preserving_edits"] == list(task_params()["label_preserving_edits"])
    text = (conf / "shapes" / "task.yml").read_text()
    assert "label_preserving_edits: [mirror, rotate90," in text
    assert "drop the\n  # turns and the mirror" in text
    catalog = loader["catalog"]
    assert catalog["plants_data"]["seed_if_empty"] is False
    assert catalog["monitoring_champion"]["model_uri"].endswith("shapes-classifier@champion")
    assert loader["credentials"]["plants_db"]["con"] == "sqlite:///data/shapes/plants.db"

    capsys.readouterr()
    assert cli.main(["task", "show", "--env", "shapes", "--conf", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == list(SHAPES)
    with pytest.raises(UserFacingError, match="exists"):
        task.init(conf, "shapes", SHAPES)
    with pytest.raises(UserFacingError, match="not one of base, local, minio"):
        task.init(conf, "minio", SHAPES)
    with pytest.raises(UserFacingError, match="two or more distinct"):
        task.parse_labels("ant,ant")
    with pytest.raises(UserFacingError, match="letters, digits"):
        task.parse_labels("ant,bee/cat")
    with pytest.raises(UserFacingError, match="no environment 'nope'"):
        task.load("nope", conf)


def test_the_task_file_names_the_edits_that_keep_a_label_and_refuses_a_name_that_is_none(
    kedro_project,
):
    """A digit turned or mirrored is another digit: a task lists the edits its labels
    survive, the behaviour and registry stages read them with the task, and a name that is
    not an edit is one line naming the key and the known edits."""
    from plants_mlops.pipelines import behaviour, registry

    conf = kedro_project.path / "conf"
    task.init(conf, "shapes", SHAPES)
    task_file = conf / "shapes" / "task.yml"
    doc = yaml.safe_load(task_file.read_text())
    doc["task"]["label_preserving_edits"] = ["blur", "jpeg_q10"]
    task_file.write_text(yaml.safe_dump(doc))
    assert task.load("shapes", conf).task.label_preserving_edits == ("blur", "jpeg_q10")
    assert "mirror" in task.load(None, conf).task.label_preserving_edits  # base untouched
    for stage, node in ((behaviour, "measure_behaviour"), (registry, "register_and_gate")):
        (found,) = [n for n in stage.create_pipeline().nodes if n.name == node]
        assert "params:task" in found.inputs

    doc["task"]["label_preserving_edits"] = ["blur", "rotate45"]
    task_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserFacingError) as err:
        task.load("shapes", conf)
    assert str(err.value) == (
        "params:task.label_preserving_edits: ['rotate45'] are not edits; known: mirror, "
        "rotate90, rotate180, rotate270, blur, darken, brighten, jpeg_q10, crop80, crop60 "
        "(conf/<env>/task.yml)"
    )


def test_a_task_command_outside_a_project_is_one_line(tmp_path, monkeypatch, capsys):
    """`--env` where there is no conf/ was a FileNotFoundError traceback."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["registry", "list", "--env", "pets"]) == 1
    err = capsys.readouterr().err
    assert f"no conf folder in {tmp_path}: run plants-mlops in the project's root" in err
    assert "Traceback" not in err


def test_a_tasks_monitoring_judges_its_own_champion_whatever_the_shell_exports(
    kedro_project, monkeypatch
):
    """PLANTS_MODEL_URI (exported to serve the base task) made a task's monitoring run
    load the base task's champion: its reference and verdict of another model."""
    from kedro.config import OmegaConfigLoader

    from plants_mlops.settings import CONFIG_LOADER_ARGS

    conf = kedro_project.path / "conf"
    task.init(conf, "patterns", PATTERNS)
    monkeypatch.setenv("PLANTS_MODEL_URI", "models:/plants-classifier/3")

    def judged(env: str) -> str:
        args = {**CONFIG_LOADER_ARGS, "default_run_env": env}
        loader = OmegaConfigLoader(conf_source=str(conf), **args)
        return loader["catalog"]["monitoring_champion"]["model_uri"]

    assert judged("patterns") == "models:/patterns-classifier@champion"
    assert judged("local") == "models:/plants-classifier/3"
    monkeypatch.delenv("PLANTS_MODEL_URI")
    assert judged("local") == "models:/plants-classifier@champion"


def test_clear_cases_are_the_tasks_and_a_new_task_sharing_a_label_gets_none(kedro_project):
    """The shipped clear cases were read for any task with a label of the same name: a
    `grass, dots, rings` task was gated on six lawn photos (all wrong: refused)."""
    from plants_mlops.pipelines import behaviour

    conf = kedro_project.path / "conf"
    task.init(conf, "ground", ("grass", "dots", "rings"))
    assert task.load("ground", conf).task.clear_cases is None
    assert task.load(None, conf).task.clear_cases == "samples/behaviour/clear"
    assert (
        "clear_cases"
        not in yaml.safe_load((conf / "base" / "parameters_behaviour.yml").read_text())["behaviour"]
    )
    (node,) = [n for n in behaviour.create_pipeline().nodes if n.name == "measure_behaviour"]
    assert "params:task" in node.inputs


def test_what_a_task_of_its_own_reads_in_the_card_gate_and_console_names_no_plant():
    """The model card's out-of-scope list, the gate's check names and the console's
    behaviour line spoke of plants to every task ("held-out non-plant photos flagged")."""
    from support.params import stage_params

    from plants_mlops.commands.demo import _DETAILS
    from plants_mlops.model.registry import behaviour_checks
    from plants_mlops.params import Gate, parse

    card = stage_params("model_card")
    fields = {"title": "Which pattern?", "description": "Patterns.", "labels": "dots, rings"}
    texts = [card["intended_use"].format(**fields)]
    texts += [line.format(**fields) for line in card["out_of_scope"]]
    gate = parse(Gate, stage_params("registry")["gate"], "registry.gate")
    texts += [c["detail"] for c in behaviour_checks({}, gate)]
    texts += [label for figures in _DETAILS.values() for _, _, label in figures]
    assert [t for t in texts if "plant" in t.lower()] == []


def test_seeding_a_task_takes_its_labels_and_refuses_the_others(kedro_project, monkeypatch, capsys):
    monkeypatch.chdir(kedro_project.path)  # the CLI reads conf/ where it runs
    task.init("conf", "shapes", SHAPES)
    manifest = kedro_project.path / "shapes.csv"
    manifest.write_text(
        "url_source,label\nhttps://x.org/1.png,ant\nhttps://x.org/2.png,dog\n"
        "https://x.org/3.png,grass\n"
    )
    capsys.readouterr()
    rc = cli.main(["db", "seed", "--env", "shapes", "--csv", str(manifest)])
    out = capsys.readouterr().out
    assert rc == 1 and "2 added" in out
    assert "label 'grass' is not one of ant, bee, cat, dog" in out
    assert (kedro_project.path / "data" / "shapes" / "plants.db").is_file()  # its own table
    # the shipped manifest is the base task's: not seeded into this one by default
    assert cli.main(["db", "seed", "--env", "shapes"]) == 1
    assert "give task 'shapes' its CSV with --csv" in capsys.readouterr().err
    # ...and the base task still refuses a shape (its own table, its own labels)
    rc = cli.main(["db", "seed", "--csv", str(manifest)])
    assert rc == 1 and "label 'ant' is not one of dandelion, grass" in capsys.readouterr().out


def test_an_ingestion_run_in_which_every_row_failed_fails(kedro_project, http_mirror, tmp_path):
    """Rows on a loopback server that is no mirror are refused (forbidden_address): right
    to refuse, wrong to call the run a success. The run stops with the count and the first
    reasons, after the report and the table's failed rows were saved."""
    rows = [
        {"url_source": f"{http_mirror}dandelion/{i}.jpg", "label": "dandelion"} for i in (1, 2, 3)
    ]
    seed(os.environ["PLANTS_DB_URL"], rows, tmp_path)
    run = kedro_project.run("ingestion", check=False)
    assert run.returncode == 1
    assert "all 3 rows it fetched failed (forbidden_address 3)" in run.stderr
    assert f"row 1 {http_mirror}dandelion/1.jpg: forbidden_address" in run.stderr
    report = json.loads(
        (kedro_project.path / "data" / "08_reporting" / "ingestion_report.json").read_text()
    )
    assert report["failed"] == 3 and report["fetched"] == 0


# A lean K=4 run: tiny catalogue, the small CNN at 64 px, the probe, thresholds for 24
# images per class, a gate a random-weights probe passes, monitoring on a few predictions.
LEAN = {
    "curation.embeddings.architecture": "small_cnn",
    "curation.embeddings.weights": "null",
    "curation.embeddings.image_size": 64,
    "curation.embeddings.cache": "null",
    "formatting.image_size": 96,
    "training.architecture": "small_cnn",
    "training.weights": "null",
    "training.image_size": 64,
    "training.quiet": "true",
    "training.serving_precision.mode": "fp32",
    "training.probe.C_grid": "[0.1,1.0]",
    "training.probe.folds": 3,
    "curation.label_issues.folds": 3,
    "registry.gate.min_f1": 0.5,
    "registry.gate.latency_runs": 5,
    # the random-weights probe of 96 images keeps labels under edits only by chance
    "registry.gate.behaviour.min_invariance": 0.0,
    "registry.gate.behaviour.min_mirror_invariance": 0.0,
    "registry.gate.require_beat_baseline": "false",
    "monitoring.min_current_rows": 20,
}


@pytest.mark.slow
def test_a_four_class_task_runs_from_its_manifest_to_a_served_champion_and_monitoring(
    kedro_project, tmp_path, monkeypatch, mlflow_tracking_uri
):
    from support.champion import unique_model_name
    from support.serving import api_in_process

    from plants_mlops.commands import mirror
    from plants_mlops.datasets import data_synth

    project = kedro_project.path
    monkeypatch.chdir(project)
    # the session's tracking server (no SQLite store to create), under a name of this run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_tracking_uri)
    model_name = unique_model_name("shapes")
    cat = tmp_path / "catalogue"
    assert (
        cli.main(
            ["data", "synth", "96", "--labels", ",".join(SHAPES), "--out", str(cat)]
            + ["--broken-share", "0"]
        )
        == 0
    )
    with mirror.serve(cat) as url:
        # the mirror setting lets this loopback origin in; nothing else private gets in
        task.init("conf", "shapes", SHAPES, mirror_prefix=data_synth.DEFAULT_PREFIX, mirror_to=url)
        task_file = project / "conf" / "shapes" / "task.yml"
        doc = yaml.safe_load(task_file.read_text())
        doc["task"]["class_balance"]["min_images_per_class"] = 15
        task_file.write_text(yaml.safe_dump(doc))
        env_globals = project / "conf" / "shapes" / "globals.yml"
        text = env_globals.read_text().replace("shapes-classifier", model_name)
        env_globals.write_text(text)
        assert cli.main(["db", "seed", "--env", "shapes", "--csv", str(cat / "manifest.csv")]) == 0
        kedro_project.run("data", env="shapes", params=LEAN)
    for stage in STAGES[STAGES.index("training") :]:
        kedro_project.run(stage, env="shapes", params=LEAN)

    data = project / "data" / "shapes"
    fingerprint = json.loads((data / "03_primary" / "dataset_fingerprint.json").read_text())
    assert fingerprint["labels"] == list(SHAPES)
    assert fingerprint["per_label"] == {label: 24 for label in SHAPES}
    checks = json.loads((data / "08_reporting" / "validation_report.json").read_text())["checks"]
    assert any(c["rule"] == "split_proportions_per_class" and c["passed"] for c in checks)
    meta = json.loads((data / "06_models" / "serving_meta.json").read_text())
    assert meta["labels"] == list(SHAPES)
    report = json.loads((data / "08_reporting" / "evaluation_report.json").read_text())
    assert len(report["model"]["confusion_matrix"]) == 4
    assert {f"roc_auc_{label}" for label in SHAPES} & set(report["model"])
    assert len(report["baselines"]["colour_histogram_logreg"]["confusion_matrix"]) == 4
    decision = json.loads((data / "08_reporting" / "registry_decision.json").read_text())
    assert decision["verdict"] == "pass", decision
    assert not (project / "data" / "06_models" / "model.onnx").exists()  # its own data root

    from plants_mlops.commands.serve import task_settings

    settings = task_settings("shapes")  # what `plants-mlops serve --env shapes` sets
    assert settings["PLANTS_MODEL_URI"] == f"models:/{model_name}@champion"
    assert settings["PLANTS_DB_URL"] == "sqlite:///data/shapes/plants.db"
    settings["PLANTS_DB_URL"] = f"sqlite:///{data / 'plants.db'}"  # the API runs elsewhere
    with api_in_process(
        tmp_path / "api",
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        model_name=model_name,
        env=settings,
    ) as client:
        answers = []
        for label in SHAPES:
            for path in sorted((cat / label).glob("*.jpg"))[:10]:
                r = client.post("/predict", files={"file": (path.name, path.read_bytes())})
                assert r.status_code == 200, r.text
                answers.append((label, r.json()))
        assert all(set(a["probabilities"]) == set(SHAPES) for _, a in answers)
        assert sum(a["label"] == label for label, a in answers) >= 30  # of 40
        headers = {"X-API-Key": "test-admin-key-not-a-secret"}
        pid = answers[0][1]["prediction_id"]
        r = client.post("/feedback", json={"prediction_id": pid, "label": "dog"}, headers=headers)
        assert r.status_code == 202, r.text
        r = client.post("/feedback", json={"prediction_id": pid, "label": "grass"}, headers=headers)
        assert r.status_code == 422 and r.json()["error"] == "unknown_label"
        assert client.get("/model").json()["labels"] == list(SHAPES)
        assert "<h1>shapes: ant / bee / cat / dog</h1>" in client.get("/").text

    kedro_project.run("monitoring", env="shapes", params=LEAN)
    verdict = json.loads((data / "08_reporting" / "monitoring_verdict.json").read_text())
    assert verdict["status"] in ("drift", "no_drift") and verdict["n_current"] == 40
    assert verdict["prediction_drift"]["label"]["method"] == "chisquare"
    assert set(verdict["prediction_drift"]["label"]["current_shares"]) <= set(SHAPES)


def test_a_task_without_clear_cases_or_a_mirror_edit_is_gated_on_what_it_measures():
    """Clear cases and invariances are the task's: a new task ships no clear cases, and a
    digit is no digit mirrored; the gate then checks what was measured, not a None. A
    missing OOD figure (a model without a detector) still fails."""
    from support.params import stage_params

    from plants_mlops.model.registry import behaviour_checks
    from plants_mlops.params import Gate, parse

    gate = parse(Gate, stage_params("registry")["gate"], "registry.gate")
    figures = {
        "invariance_min": 0.97,
        "invariance_mirror": None,  # the task's label_preserving_edits leave the mirror out
        "functionality": None,  # no clear case for the task's labels
        "ood_flagged": 0.9,
        "false_flags": 0.02,
    }
    checks = {c["name"]: c for c in behaviour_checks(figures, gate)}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["functionality"]["detail"] == (
        "clear cases right: not measured for this task: not checked"
    )
    checks = {c["name"]: c for c in behaviour_checks({**figures, "ood_flagged": None}, gate)}
    assert not checks["ood_flagged"]["passed"]


PATTERNS = ("stripes", "dots", "rings")
# What `plants-mlops serve --env ENV` may set for its workers.
SERVE_VARIABLES = (
    "PLANTS_MODEL_URI",
    "PLANTS_DB_URL",
    "PLANTS_TITLE",
    "PLANTS_DESCRIPTION",
    "PLANTS_KEDRO_ENV",
    "PLANTS_UNCERTAIN_DIR",
    "PLANTS_PREDICTION_LOG_SPILL_DIR",
    "PLANTS_RETRAIN_COMMAND",
)


def _served(monkeypatch, env: str | None, **given: str):
    """The serving settings of `plants-mlops serve --env ENV` with ``given`` in the
    environment beforehand (the environment is restored after the test)."""
    from plants_mlops.commands.serve import apply_task_settings
    from plants_mlops.serving.config import ServingConfig

    for var in (*SERVE_VARIABLES, *given):
        monkeypatch.setenv(var, given.get(var, ""))  # restored afterwards
        if var not in given:
            monkeypatch.delenv(var)
    apply_task_settings(env)
    return ServingConfig.from_env()


def test_a_tasks_api_and_its_monitoring_retrain_that_task(kedro_project, monkeypatch):
    """POST /admin/retrain of `serve --env patterns` and a drift verdict of `kedro run --env
    patterns --pipelines monitoring` start `pipeline run --env patterns`, not the base
    task's run (which read the task's table and marked its rows failed); an explicit
    PLANTS_RETRAIN_COMMAND still wins."""
    monkeypatch.chdir(kedro_project.path)
    task.init("conf", "patterns", PATTERNS)
    config = _served(monkeypatch, "patterns")
    assert config.effective_retrain_command()[1:] == ["pipeline", "run", "--env", "patterns"]
    config = _served(monkeypatch, "patterns", PLANTS_RETRAIN_COMMAND="make retrain")
    assert config.effective_retrain_command() == ["make", "retrain"]
    # the base task's API: the base task's run, as before
    assert _served(monkeypatch, None).effective_retrain_command()[1:] == ["pipeline", "run"]

    # the monitoring run's trigger: its drift verdict, retraining off (the command is named)
    reporting = kedro_project.path / "data" / "patterns" / "08_reporting"
    reporting.mkdir(parents=True)
    verdict = {"status": "drift", "drift": True, "reasons": ["embeddings drift"]}
    (reporting / "monitoring_verdict.json").write_text(json.dumps(verdict))
    kedro_project.run("monitoring", env="patterns", node_names=["trigger_retraining"])
    trigger = json.loads((reporting / "monitoring_retrain_trigger.json").read_text())
    assert trigger["started"] is False and "retraining is off" in trigger["detail"]
    assert trigger["command"][1:] == ["pipeline", "run", "--env", "patterns"]
    kedro_project.run(
        "monitoring",
        env="patterns",
        node_names=["trigger_retraining"],
        extra_env={"PLANTS_RETRAIN_COMMAND": "make retrain"},
    )
    trigger = json.loads((reporting / "monitoring_retrain_trigger.json").read_text())
    assert trigger["command"] == ["make", "retrain"]


@contextlib.contextmanager
def _task_api(project, monkeypatch, env: str, **given: str):
    """The API of `plants-mlops serve --env ENV` in this process (a tiny champion
    registered as the task's model in a store of its own), ``given`` set beforehand."""
    from support.champion import register_champion
    from support.serving import api_in_process

    tracking = f"sqlite:///{project / 'mlflow.db'}"
    register_champion(tracking, name=task.load(env).model_name)
    _served(monkeypatch, env, **given)  # the environment serve --env leaves
    settings = {var: os.environ[var] for var in (*SERVE_VARIABLES, *given) if var in os.environ}
    # (PLANTS_MODEL_URI of the settings names the task's champion)
    with api_in_process(project, tracking_uri=tracking, model_name="-", env=settings) as client:
        yield client


def test_a_tasks_review_reads_its_own_queue_and_every_hint_names_its_env(
    kedro_project, monkeypatch, capsys
):
    """`data review --env patterns` read the base task's queue (data/08_reporting): its row
    ids made the user exclude images nobody flagged. It reads the task's data root; the
    hints that send a person there (the API's /feedback reply, the review page, a missing
    queue) name the task's --env."""
    from support.params import stage_params

    from plants_mlops.pipelines.curation.nodes import render_review

    project = kedro_project.path
    monkeypatch.chdir(project)
    task.init("conf", "patterns", PATTERNS)
    item = {"rank": 1, "split": "train", "problems": ["label issue"], "action": "relabel"}
    for root, row, label in (("data", 41, "dandelion"), ("data/patterns", 7, "dots")):
        (project / root / "08_reporting").mkdir(parents=True, exist_ok=True)
        queue = [{**item, "source_id": row, "label": label}]
        (project / root / "08_reporting" / "curation_queue.json").write_text(json.dumps(queue))
    capsys.readouterr()
    assert cli.main(["data", "review", "--env", "patterns", "--json"]) == 0
    assert [it["source_id"] for it in json.loads(capsys.readouterr().out)["queue"]] == [7]
    assert cli.main(["data", "review", "--json"]) == 0  # the base task: its own, as before
    assert [it["source_id"] for it in json.loads(capsys.readouterr().out)["queue"]] == [41]
    (project / "data" / "patterns" / "08_reporting" / "curation_queue.json").unlink()
    assert cli.main(["data", "review", "--env", "patterns"]) == 0
    assert (
        "no review queue at data/patterns/08_reporting/curation_queue.json: run "
        "`kedro run --env patterns --pipelines curation` first" in capsys.readouterr().out
    )

    page = render_review([], {}, {}, stage_params("curation"), "patterns")
    assert "plants-mlops data exclude ID --env patterns --reason TEXT" in page

    with _task_api(project, monkeypatch, "patterns") as client:
        r = client.post("/predict", files={"file": ("a.jpg", images.sample_jpeg(0))})
        assert r.status_code == 200, r.text
        body = {"prediction_id": r.json()["prediction_id"], "label": "grass"}
        r = client.post("/feedback", json=body, headers={"X-API-Key": ADMIN_KEY})
        assert r.status_code == 202, r.text
        assert "filed for review (`plants-mlops data review --env patterns`)" in r.json()["detail"]


def test_a_tasks_run_log_and_kept_images_are_under_its_data_root(kedro_project, monkeypatch):
    """`pipeline run --env patterns` wrote its full log to data/08_reporting and the task's
    API kept uncertain images under data/01_raw/_uncertain, the base task's folders; both
    are the task's now (data/patterns/...). A PLANTS_UNCERTAIN_DIR given still wins."""
    from pathlib import Path

    from plants_mlops.commands.stack import _reporting

    project = kedro_project.path
    monkeypatch.chdir(project)
    task.init("conf", "patterns", PATTERNS)
    # the folder `pipeline run` names its full log in (stage_console's `reporting`)
    assert _reporting(project, "patterns") == Path("data/patterns/08_reporting")
    assert _reporting(project, None) == Path("data/08_reporting")

    assert _served(monkeypatch, "patterns", PLANTS_UNCERTAIN_DIR="/keep").uncertain_dir == "/keep"
    # Spilled rows are replayed by whichever API shares the folder: the base task's put a
    # task's rows into its own table; each task spills into its own folder now.
    assert _served(monkeypatch, "patterns").log_spill_dir == "data/patterns/prediction_log_spill"
    assert _served(monkeypatch, None).log_spill_dir == "data/prediction_log_spill"
    given = _served(monkeypatch, "patterns", PLANTS_PREDICTION_LOG_SPILL_DIR="/spill")
    assert given.log_spill_dir == "/spill"
    keep = {"PLANTS_KEEP_UNCERTAIN_IMAGES": "true", "PLANTS_UNCERTAIN_BELOW": "1.0"}
    with _task_api(project, monkeypatch, "patterns", **keep) as client:
        photo = images.sample_jpeg(0)
        r = client.post("/predict", files={"file": ("a.jpg", photo)})
        assert r.status_code == 200 and r.json()["uncertain"] is True, r.text
    sha = hashlib.sha256(photo).hexdigest()
    kept = project / "data" / "patterns" / "01_raw" / "_uncertain" / f"{sha}.jpg"
    assert kept.read_bytes() == photo
    assert not (project / "data" / "01_raw" / "_uncertain").exists()
