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


def _fetch(url: str, policy: IngestionParams, trusted: tuple[fetching.Origin, ...] = ()):
    with fetching.make_client(policy, 2, trusted) as client:
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
    url = f"{http_mirror}faults/redirect.jpg?to=http://localhost:1/secret"
    with pytest.raises(fetching.FetchError) as caught:
        _fetch(url, _policy(), trusted=(fetching.Origin.of(http_mirror),))
    assert caught.value.reason == "forbidden_address"


def test_the_configured_mirror_is_trusted_and_a_setting_allows_private_networks(http_mirror):
    url = f"{http_mirror}dandelion/00000000.jpg"
    before = mirror_counts(http_mirror).get("/dandelion/00000000.jpg", 0)
    with pytest.raises(fetching.FetchError):
        _fetch(url, _policy())  # not a mirror here, not allowed: never requested
    assert mirror_counts(http_mirror).get("/dandelion/00000000.jpg", 0) == before
    data, _ = _fetch(url, _policy(), trusted=(fetching.Origin.of(http_mirror),))
    assert data[:3] == b"\xff\xd8\xff"
    data, _ = _fetch(url, _policy(allow_private_networks=True))
    assert data[:3] == b"\xff\xd8\xff"


def test_a_mirror_is_trusted_only_for_its_own_origin_and_path(http_mirror):
    """Trust is scheme + host + port + path prefix: another port of the mirror's host, a
    path outside its prefix, a URL with userinfo and a redirect leaving it are refused
    before any connection."""
    from support.servers import free_port

    trusted = (fetching.Origin.of(f"{http_mirror}dandelion/"),)
    assert (
        _fetch(f"{http_mirror}dandelion/00000000.jpg", _policy(), trusted)[0][:3] == b"\xff\xd8\xff"
    )
    base = http_mirror.rstrip("/")
    other_port = base.rsplit(":", 1)[0] + f":{free_port()}"
    refused = {
        f"{other_port}/dandelion/00000000.jpg": "forbidden_address",
        f"{base}/grass/00000000.jpg": "forbidden_address",
        f"{base}/dandelion/../grass/00000000.jpg": "forbidden_address",
        f"{base}/dandelion/%2e%2e/grass/00000000.jpg": "forbidden_address",
        f"{base.replace('http://', 'https://')}/dandelion/00000000.jpg": "forbidden_address",
        f"http://example.com@{base.split('//', 1)[1]}/dandelion/00000000.jpg": "forbidden_userinfo",
        f"{base}/dandelion/../faults/redirect.jpg?to={other_port}/x.jpg": "forbidden_address",
    }
    before = mirror_counts(http_mirror)
    for url, reason in refused.items():
        with pytest.raises(fetching.FetchError) as caught:
            _fetch(url, _policy(), trusted)
        assert caught.value.reason == reason, url
    assert mirror_counts(http_mirror) == before  # nothing outside the prefix was requested
    # A redirect from inside the mirror is checked again: to another port, refused.
    wide = (fetching.Origin.of(http_mirror),)
    with pytest.raises(fetching.FetchError) as caught:
        _fetch(f"{base}/faults/redirect.jpg?to={other_port}/x.jpg", _policy(), wide)
    assert caught.value.reason == "forbidden_address"


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
    t0 = time.monotonic()
    with pytest.raises(fetching.FetchError) as caught:
        _fetch(
            f"{http_mirror}faults/trickle.jpg",
            _policy(total_timeout_s=2.0),
            trusted=(fetching.Origin.of(http_mirror),),
        )
    assert caught.value.reason == "timeout" and "2 s" in caught.value.detail
    assert time.monotonic() - t0 < 8


def test_a_jpeg_padded_out_or_cut_short_is_refused_not_stored_as_ok():
    """libjpeg decodes both as grey padding; ingestion refuses them before decoding."""
    from support import images

    from plants_mlops.pipelines.ingestion.nodes import check_bytes

    padded = images.padded_jpeg()
    assert len(padded) == 693
    with pytest.raises(fetching.FetchError) as caught:
        check_bytes(padded, None)
    assert caught.value.reason == "damaged_image" and "6000x6000" in caught.value.detail
    whole = images.sample_jpeg(1)
    with pytest.raises(fetching.FetchError) as caught:
        check_bytes(whole[:-2] + b"\0" * 16, None)  # end marker gone, padded with zeros
    assert caught.value.reason == "damaged_image"
    assert check_bytes(whole, None)[1] == "jpg"


def test_a_phone_photo_is_checked_at_reduced_scale_with_a_full_decodes_verdicts(monkeypatch):
    """Ingestion's check reads every byte of a 12 Mpx JPEG but decodes it at 1/8 scale (not
    4032 x 3024 pixels), and damaged copies of it get the verdict a full-size decode gives:
    cut in half or before its end marker, ``damaged_image``; a zeroed stretch of scan data,
    or its last kilobyte gone behind a forged end marker, decodes (libjpeg pads) both ways."""
    from support import images

    from plants_mlops import imaging
    from plants_mlops.pipelines.ingestion.nodes import check_bytes

    phone = images.phone_jpeg(1)
    with monkeypatch.context() as spy:
        decoded = images.record_decodes(spy)
        assert check_bytes(phone, None)[1] == "jpg"
    assert decoded and max(decoded[-1]) <= 4032 // 8, decoded

    middle = len(phone) // 2
    damaged = {
        "cut in half": phone[:middle],
        "end marker gone": phone[:-2],
        "zeroed scan data": phone[:middle] + bytes(4000) + phone[middle + 4000 :],
        "last kilobyte gone, end marker forged": phone[:-1000] + b"\xff\xd9",
    }
    verdicts = {}
    for name, data in damaged.items():
        try:
            imaging.decode_image(data)
            full = "ok"
        except imaging.ImageDecodeError as exc:
            full = exc.reason
        try:
            check_bytes(data, None)
            checked = "ok"
        except fetching.FetchError as exc:
            checked = exc.reason
        verdicts[name] = (full, checked)
    assert all(full == checked for full, checked in verdicts.values()), verdicts
    assert verdicts["cut in half"][1] == verdicts["end marker gone"][1] == "damaged_image"
