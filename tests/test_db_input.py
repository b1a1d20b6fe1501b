"""`plants-mlops db seed` refuses bad lines one by one and never prints a secret."""

from __future__ import annotations

from plants_mlops import cli, db

PREFIX = "https://example.org/plants"


def _seed(tmp_path, capsys, body: bytes) -> tuple[int, str]:
    csv_path = tmp_path / "rows.csv"
    csv_path.write_bytes(b"url_source,label\n" + body)
    url = f"sqlite:///{tmp_path / 'plants.db'}"
    capsys.readouterr()
    rc = cli.main(["db", "seed", "--db-url", url, "--csv", str(csv_path)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _urls(tmp_path) -> list[str]:
    return [
        r["url_source"] for r in db.load_rows(db.make_engine(f"sqlite:///{tmp_path / 'plants.db'}"))
    ]


def test_a_line_that_is_not_utf8_is_refused_and_the_others_load(tmp_path, capsys):
    body = f"{PREFIX}/a.jpg,grass\n".encode() + b"https://example.org/\xff\xfe.jpg,grass\n"
    body += f"{PREFIX}/b.jpg,dandelion\n".encode()
    rc, out = _seed(tmp_path, capsys, body)
    assert rc == 1 and "refused line 3: line is not valid UTF-8" in out
    assert "Traceback" not in out
    assert _urls(tmp_path) == [f"{PREFIX}/a.jpg", f"{PREFIX}/b.jpg"]


def test_an_oversized_field_is_refused_and_the_others_load(tmp_path, capsys):
    huge = "https://example.org/" + "x" * 200_000 + ".jpg"
    body = f"{PREFIX}/a.jpg,grass\n{huge},grass\n{PREFIX}/b.jpg,grass\n".encode()
    rc, out = _seed(tmp_path, capsys, body)
    assert rc == 1 and "refused line 3: unreadable CSV line" in out
    assert "Traceback" not in out
    assert _urls(tmp_path) == [f"{PREFIX}/a.jpg", f"{PREFIX}/b.jpg"]


def test_control_characters_in_a_url_are_refused(tmp_path, capsys):
    body = f'{PREFIX}/a.jpg,grass\n"{PREFIX}/b\n.jpg",grass\n'.encode()
    body += f"{PREFIX}/c\x00.jpg,grass\n{PREFIX}/d\t.jpg,grass\n".encode()
    rc, out = _seed(tmp_path, capsys, body)
    assert rc == 1
    assert out.count("control character") + out.count("NUL") >= 3
    assert _urls(tmp_path) == [f"{PREFIX}/a.jpg"]


def test_a_label_conflict_is_reported_and_exits_non_zero(tmp_path, capsys):
    rc, _ = _seed(tmp_path, capsys, f"{PREFIX}/a.jpg,grass\n".encode())
    assert rc == 0
    rc, out = _seed(tmp_path, capsys, f"{PREFIX}/a.jpg,dandelion\n".encode())
    assert rc == 1 and "1 label conflicts" in out and "table label 'grass'" in out


def test_a_password_in_an_image_url_is_never_printed(tmp_path, capsys):
    body = b"https://alice:s3cret-pw@example.org/a.jpg,tulip\n"
    rc, out = _seed(tmp_path, capsys, body)
    assert rc == 1 and "tulip" in out
    assert "s3cret-pw" not in out and "alice:***@example.org" in out


def test_an_unparseable_database_url_is_not_echoed(capsys):
    rc = cli.main(["db", "status", "--db-url", "postgresql://bob:s3cret-pw@@host:notaport/db"])
    err = capsys.readouterr().err
    assert rc == 1 and "not a database URL" in err
    assert "s3cret-pw" not in err
