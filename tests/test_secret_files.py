"""``X_FILE`` for every secret the project reads (plants_mlops.secret_files): what the
cluster's pods get instead of secrets in their environment (docs/deploy.md)."""

from __future__ import annotations

import pytest

from plants_mlops.errors import UserFacingError
from plants_mlops.secret_files import SECRET_VARIABLES, load_secret_files


def test_every_secret_variable_is_filled_from_its_file_without_the_trailing_newline(tmp_path):
    env = {}
    for name in SECRET_VARIABLES:
        (tmp_path / name).write_text(f"value-of-{name}\n")
        env[f"{name}_FILE"] = str(tmp_path / name)
    env["PLANTS_DB_URL_FILE"] = ""  # the URL itself comes from the ConfigMap here
    env["PLANTS_DB_URL"] = "postgresql+psycopg2://plants@postgres:5432/plants"
    loaded = load_secret_files(env)
    assert set(loaded) == set(SECRET_VARIABLES) - {"PLANTS_DB_URL"}
    assert env["AWS_SECRET_ACCESS_KEY"] == "value-of-AWS_SECRET_ACCESS_KEY"
    assert env["MLFLOW_TRACKING_PASSWORD"] == "value-of-MLFLOW_TRACKING_PASSWORD"
    # the password goes into the URL, quoted as a URL needs
    assert env["PLANTS_DB_URL"] == (
        "postgresql+psycopg2://plants:value-of-PLANTS_DB_PASSWORD@postgres:5432/plants"
    )
    # a child process inherits X and X_FILE: loading again changes nothing
    before = dict(env)
    load_secret_files(env)
    assert env == before


def test_a_password_with_url_characters_is_quoted_into_the_url(tmp_path):
    (tmp_path / "pw").write_text("p@ss/w:rd")
    env = {
        "PLANTS_DB_URL": "postgresql://plants@db/plants",
        "PLANTS_DB_PASSWORD_FILE": str(tmp_path / "pw"),
    }
    load_secret_files(env)
    import sqlalchemy as sa

    assert sa.engine.make_url(env["PLANTS_DB_URL"]).password == "p@ss/w:rd"


def test_the_whole_db_url_can_come_from_a_file(tmp_path):
    (tmp_path / "url").write_text("postgresql://plants:secret@db/plants\n")
    env = {"PLANTS_DB_URL_FILE": str(tmp_path / "url")}
    assert load_secret_files(env) == ["PLANTS_DB_URL"]
    assert env["PLANTS_DB_URL"] == "postgresql://plants:secret@db/plants"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"MLFLOW_TRACKING_PASSWORD": "a", "MLFLOW_TRACKING_PASSWORD_FILE": "{f}"},
            "both MLFLOW_TRACKING_PASSWORD and MLFLOW_TRACKING_PASSWORD_FILE are set: set one",
        ),
        (
            {"AWS_ACCESS_KEY_ID_FILE": "{missing}"},
            "AWS_ACCESS_KEY_ID_FILE={missing}: cannot read it (No such file or directory)",
        ),
        ({"AWS_ACCESS_KEY_ID_FILE": "{empty}"}, "AWS_ACCESS_KEY_ID_FILE={empty} is empty"),
        (
            {"PLANTS_DB_URL": "postgresql://u:other@db/x", "PLANTS_DB_PASSWORD_FILE": "{f}"},
            "PLANTS_DB_URL carries a password and PLANTS_DB_PASSWORD(_FILE) another: set one",
        ),
    ],
)
def test_ambiguous_or_unreadable_secrets_are_refused_in_one_line(tmp_path, env, message):
    paths = {"f": tmp_path / "f", "missing": tmp_path / "missing", "empty": tmp_path / "empty"}
    paths["f"].write_text("from-file")
    paths["empty"].write_text("\n")
    env = {k: v.format(**paths) for k, v in env.items()}
    with pytest.raises(UserFacingError) as err:
        load_secret_files(env)
    assert str(err.value) == message.format(**paths)
