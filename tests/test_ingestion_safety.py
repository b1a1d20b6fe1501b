"""Ingestion fetches only what it should: public http(s) addresses, the configured mirrors,
files inside a mirror folder, and never longer than its deadline. The HTTP mirror of the
tests is a real server on 127.0.0.1; its /counts route proves what was (not) requested."""

from __future__ import annotations

import time

import pytest
from data_testlib import mirror_counts
from support.params import stage_params

from plants_mlops.params import IngestionParams, parse
from plants_mlops.pipelines.ingestion import fetch as fetching


def _policy(**overrides) -> IngestionParams:
    base = {"read_timeout_s": 1.0, "connect_timeout_s": 1.0, "max_attempts": 1}
    return parse(IngestionParams, stage_params("ingestion", **{**base, **overrides}), "ingestion")


def _fetch(url: str, policy: IngestionParams, trusted: tuple[str, ...] = ()):
    with fetching.make_client(policy, 2, trusted_hosts=trusted) as client:
        return fetching.fetch(url, client, policy)


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://127.0.0.1:22/",  # loopback
        "http://10.1.2.3/x.jpg",  # private
        "http://[::1]:8080/x.jpg",  # IPv6 loopback
        "http://localhost/x.jpg",  # a name that resolves to loopback
    ],
)
def test_internal_addresses_are_refused_before_any_connection(url):
    t0 = time.monotonic()
    with pytest.raises(fetching.FetchError) as caught:
        _fetch(url, _policy())
    assert caught.value.reason == "forbidden_address"
    assert "allow_private_networks" in caught.value.detail
    assert time.monotonic() - t0 < 2  # refused, not timed out


def test_only_http_and_https_are_fetched():
    for url in ("ftp://example.org/x.jpg", "file:///etc/passwd", "gopher://example.org/"):
        with pytest.raises(fetching.FetchError) as caught:
            _fetch(url, _policy())
        assert caught.value.reason in ("forbidden_scheme", "forbidden_path"), url


def test_a_redirect_to_an_internal_address_is_refused(http_mirror):
    host = http_mirror.split("//", 1)[1].split(":", 1)[0]  # the trusted mirror host
    url = f"{http_mirror}faults/redirect.jpg?to=http://localhost:1/secret"
    with pytest.raises(fetching.FetchError) as caught:
        _fetch(url, _policy(), trusted=(host,))
    assert caught.value.reason == "forbidden_address"


def test_the_configured_mirror_is_trusted_and_a_setting_allows_private_networks(http_mirror):
    host = http_mirror.split("//", 1)[1].split(":", 1)[0]
    url = f"{http_mirror}dandelion/00000000.jpg"
    before = mirror_counts(http_mirror).get("/dandelion/00000000.jpg", 0)
    with pytest.raises(fetching.FetchError):
        _fetch(url, _policy())  # not a mirror here, not allowed: never requested
    assert mirror_counts(http_mirror).get("/dandelion/00000000.jpg", 0) == before
    data, _ = _fetch(url, _policy(), trusted=(host,))
    assert data[:3] == b"\xff\xd8\xff"
    data, _ = _fetch(url, _policy(allow_private_networks=True))
    assert data[:3] == b"\xff\xd8\xff"


def test_a_mirror_folder_is_never_escaped(tmp_path):
    folder = tmp_path / "mirror"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(b"\xff\xd8\xffdata")
    (tmp_path / "secret.txt").write_text("outside")
    mirrors = fetching.parse_mirrors([{"prefix": "https://example.org/", "to": str(folder)}])
    inside = fetching.resolve("https://example.org/ok.jpg", mirrors)
    assert _fetch(inside, _policy())[0] == b"\xff\xd8\xffdata"
    with pytest.raises(fetching.FetchError) as caught:
        fetching.resolve("https://example.org/../secret.txt", mirrors)
    assert caught.value.reason == "forbidden_path"
    with pytest.raises(fetching.FetchError) as caught:
        fetching.resolve("https://example.org/%2e%2e/secret.txt", mirrors)
    assert caught.value.reason == "forbidden_path"


def test_a_server_that_trickles_is_cut_at_the_total_deadline(http_mirror):
    host = http_mirror.split("//", 1)[1].split(":", 1)[0]
    t0 = time.monotonic()
    with pytest.raises(fetching.FetchError) as caught:
        _fetch(f"{http_mirror}faults/trickle.jpg", _policy(total_timeout_s=2.0), trusted=(host,))
    assert caught.value.reason == "timeout" and "2 s" in caught.value.detail
    assert time.monotonic() - t0 < 8
