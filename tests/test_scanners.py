"""The policy scanners a platform team runs before adopting the deployment: checkov on both
rendered Kustomize overlays and the Dockerfile, offline, with 0 failed checks outside the
reviewed skip list ``deploy/checkov/skips.yaml``; hadolint on the Dockerfile
(tests/test_project_static.py). checkov lives in its own venv (``.venv-checkov``, made by
``scripts/test-prereqs.sh`` from the pins in ``deploy/checkov/requirements.txt``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import yaml
from support import prereqs

ROOT = Path(__file__).resolve().parents[1]
CHECKOV = ROOT / os.environ.get("CHECKOV_VENV", ".venv-checkov") / "bin" / "checkov"
SKIPS = ROOT / "deploy" / "checkov" / "skips.yaml"
OVERLAYS = ("cpu", "gpu")
PROJECT_IMAGE = "registry.example.com/plants-mlops"


class _Trap:
    """A local listener every proxy variable points at: any network call checkov tries
    lands here (and fails), and the test sees that it was tried."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.attempts += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def _offline_env(proxy: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(
        {
            # no Prisma Cloud: no policy metadata, guidelines or mappings downloaded
            "BC_SKIP_MAPPING": "TRUE",
            "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true",
            "HTTP_PROXY": proxy,
            "HTTPS_PROXY": proxy,
            "http_proxy": proxy,
            "https_proxy": proxy,
            "NO_PROXY": "",
            "no_proxy": "",
        }
    )
    env.pop("BC_API_KEY", None)
    return env


@pytest.fixture(scope="module")
def rendered_text() -> dict[str, str]:
    kubectl = prereqs.need(
        "kubectl", "kubectl 1.32 (built-in Kustomize) is part of the machine image"
    )
    out = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [kubectl, "kustomize", str(ROOT / "deploy" / "k8s" / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        out[overlay] = proc.stdout
    return out


@pytest.fixture(scope="module")
def rendered_docs(rendered_text) -> dict[str, list[dict]]:
    return {o: [d for d in yaml.safe_load_all(t) if d] for o, t in rendered_text.items()}


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory, rendered_text) -> dict[str, list[dict]]:
    """Failed checks per scanned file: the two rendered overlays and the Dockerfile."""
    if not CHECKOV.exists():
        prereqs.missing(f"checkov at {CHECKOV.relative_to(ROOT)}")
    folder = tmp_path_factory.mktemp("checkov")
    files = []
    for overlay, text in rendered_text.items():
        (folder / f"{overlay}.yaml").write_text(text)
        files.append(folder / f"{overlay}.yaml")
    files.append(ROOT / "Dockerfile")
    trap = _Trap()
    try:
        proc = subprocess.run(
            [
                str(CHECKOV),
                "--skip-download",
                "--framework",
                "kubernetes",
                "dockerfile",
                "--output",
                "json",
                "--compact",
                "--quiet",
                "--soft-fail",
                "-f",
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=folder,
            env=_offline_env(f"http://127.0.0.1:{trap.port}"),
        )
    finally:
        trap.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert trap.attempts == 0, f"checkov tried the network {trap.attempts} times"
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_file: dict[str, list[dict]] = {f.name: [] for f in files}
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["passed"] > 100, report["summary"]  # it really checked
        for failed in report["results"]["failed_checks"]:
            by_file[Path(failed["file_path"]).name].append(failed)
    return by_file


def _skips() -> set[tuple[str, str]]:
    entries = yaml.safe_load(SKIPS.read_text())
    for entry in entries:
        assert set(entry) == {"check", "resource", "reason"}, entry
        assert len(entry["reason"].split()) >= 8, entry  # a reason, not a placeholder
    return {(e["check"], e["resource"]) for e in entries}


@pytest.mark.parametrize("scanned", [*(f"{o}.yaml" for o in OVERLAYS), "Dockerfile"])
def test_checkov_finds_nothing_outside_the_reviewed_skip_list(checkov_report, scanned):
    failed = {(f["check_id"], f["resource"]) for f in checkov_report[scanned]}
    skips = _skips()
    unexpected = sorted(failed - skips)
    assert not unexpected, "\n".join(
        f"{f['check_id']} {f['check_name']}: {f['resource']}"
        for f in checkov_report[scanned]
        if (f["check_id"], f["resource"]) in set(unexpected)
    )
    if scanned.endswith(".yaml"):
        # an entry that no longer fails is stale: the list shrinks with the findings
        assert skips <= failed, sorted(skips - failed)


def test_the_skip_list_holds_only_workloads_of_upstream_images(rendered_docs):
    docs = [d for overlay in OVERLAYS for d in rendered_docs[overlay]]
    images = {}
    for d in docs:
        spec = d.get("spec") or {}
        pod = (spec.get("template") or {}).get("spec")
        if pod:
            key = f"{d['kind']}.{d['metadata']['namespace']}.{d['metadata']['name']}"
            images[key] = {c["image"] for c in pod["containers"]}
    for check, resource in _skips():
        assert resource in images, (check, resource)
        assert not [i for i in images[resource] if i.startswith(PROJECT_IMAGE)], (
            f"{check} on {resource}: the project's own image is ours to fix, not to skip"
        )
