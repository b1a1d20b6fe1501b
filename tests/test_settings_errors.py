"""Bad settings are one line and exit status 1, read only by the commands that need them:
a bad serving port never breaks `db status`."""

from __future__ import annotations

import pytest

from plants_mlops import cli


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_bad_serving_port_setting_breaks_only_serve(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PLANTS_SERVE_PORT", "abc")
    url = f"sqlite:///{tmp_path / 'plants.db'}"
    rc, out, _ = _run(capsys, "db", "status", "--db-url", url)
    assert rc == 0 and "rows: 0" in out
    rc, _, err = _run(capsys, "serve")
    assert (
        rc == 1 and err.strip() == "error: PLANTS_SERVE_PORT='abc' is not a port number (0..65535)"
    )


@pytest.mark.parametrize("port", ["70000", "-1", "eighty"])
def test_an_impossible_port_flag_is_one_line(capsys, monkeypatch, port):
    monkeypatch.delenv("PLANTS_SERVE_PORT", raising=False)
    rc, _, err = _run(capsys, "serve", "--port", port)
    assert rc == 1 and err.startswith("error: --port=") and port in err
    assert len(err.splitlines()) == 1
