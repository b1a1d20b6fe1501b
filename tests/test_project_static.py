"""Static checks of what cannot run here (no Docker engine, no cluster): the compose file,
the Dockerfile, Kubernetes manifests and the CI workflow are validated against their
schemas and linters; and the repository's own promises (two commands, no secrets)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import prereqs

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(argv: list[str], cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_compose_file_matches_the_compose_spec():
    proc = _run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_compose_config_resolves_with_the_example_env(tmp_path):
    compose = prereqs.need("docker-compose")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    shutil.copy(ROOT / "deploy" / "env.example", tmp_path / ".env")
    proc = _run([compose, "config"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert {"minio", "mysql", "mlflow", "zenml", "api"} <= set(services)
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_compose_refuses_to_start_without_secrets(tmp_path):
    compose = prereqs.need("docker-compose")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path)
    env = {
        k: v
        for k, v in __import__("os").environ.items()
        if not k.startswith(("MINIO", "MYSQL", "PLANTS_API"))
    }
    proc = _run([compose, "config", "-q"], cwd=tmp_path, env=env)
    assert proc.returncode != 0
    assert "set MINIO_ROOT_USER in .env" in proc.stderr


def test_dockerfile_passes_hadolint():
    proc = _run([str(BIN / "hadolint"), "Dockerfile"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kubernetes_manifests_are_valid(overlay, tmp_path):
    """What `kubectl kustomize` renders for an overlay passes kubernetes-validate --strict
    (more checks, and the ZenML pods, in tests/test_deploy_k8s.py)."""
    kubectl = prereqs.need(
        "kubectl", "kubectl 1.32 (built-in Kustomize) is part of the machine image"
    )
    rendered = _run([kubectl, "kustomize", f"deploy/k8s/overlays/{overlay}"])
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.count("\nkind: ") > 20
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered.stdout)
    proc = _run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.32.0", str(manifest)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ci_workflow_matches_the_github_schema_and_runs_ci_run():
    proc = _run(
        [
            str(BIN / "check-jsonschema"),
            "--builtin-schema",
            "vendor.github-workflows",
            ".github/workflows/ci.yml",
        ]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "bash .ci/run" in (ROOT / ".github/workflows/ci.yml").read_text()


def test_ci_run_calls_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    commands = [
        ln for ln in ci.splitlines() if ln.strip() and not ln.startswith(("#", "set ", "cd "))
    ]
    assert commands == ["make test"]


def test_the_suites_workers_take_modules_in_the_order_conftest_sorts_them(pytestconfig):
    """``make test`` runs pytest-xdist with ``--dist loadfile``; conftest sorts the longest
    modules first, and xdist must not sort them again by their number of tests (its default
    since 3.6: the two-test ZenML module, the longest, started last)."""
    assert pytestconfig.getoption("loadscopereorder") is False


def test_no_secrets_or_local_config_are_tracked():
    tracked = _run(["git", "ls-files"]).stdout.splitlines()
    if not tracked:
        prereqs.missing("a git checkout (`git ls-files` lists nothing)")
    assert not [f for f in tracked if f.startswith("conf/local/") and not f.endswith(".gitkeep")]
    assert ".env" not in tracked
    ignored = _run(["git", "check-ignore", "conf/local/credentials.yml", ".env"]).stdout.split()
    assert ignored == ["conf/local/credentials.yml", ".env"]


_MD_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")
_DOC_MENTION = re.compile(r"\bdocs/[\w.-]+\.md\b")


def test_relative_markdown_links_resolve():
    pages = [ROOT / "README.md", ROOT / "PROBLEM.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in _MD_LINK.findall(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            if not (page.parent / target.split("#", 1)[0]).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_every_docs_page_named_in_the_repository_exists():
    named = []
    for folder in ("src", "conf", "scripts", "tests", "docs"):
        named += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yml", ".md"}]
    named += [ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "Makefile"]
    missing = [
        f"{path.relative_to(ROOT)}: {doc}"
        for path in named
        for doc in _DOC_MENTION.findall(path.read_text(errors="replace"))
        if not (ROOT / doc).exists()
    ]
    assert missing == []
