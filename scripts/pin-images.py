#!/usr/bin/env python3
"""Pin every image of the cluster by digest: the release step (docs/deploy.md, "Images").

Reads the Kustomize component deploy/k8s/release/kustomization.yaml, whose `images:`
entries name each image by `name` (or `newName`) and `newTag`, and rewrites each entry's
`digest:` line with the digest the registry gives for name:tag (`crane digest`, else
`docker buildx imagetools inspect`). Comments and layout are kept (the file is edited
line by line, not re-dumped).

  python3 scripts/pin-images.py                      resolve every entry in the registry
  python3 scripts/pin-images.py --digest plants-mlops=sha256:...  --no-resolve
                                                     set one by hand (docker push prints it)
  python3 scripts/pin-images.py --check              exit 1 while a digest is unresolved

Standard library only: it runs wherever the release is cut, without the project's venv.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

DEFAULT_FILE = (
    Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "release" / "kustomization.yaml"
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
UNRESOLVED = "sha256:" + "0" * 64
FIELD = re.compile(
    r"^(?P<indent>\s*)(?:- )?(?P<key>name|newName|newTag|digest):\s*(?P<value>\S+)\s*$"
)


def _entries(lines: list[str]) -> list[dict]:
    """One dict per `images:` entry: name, newName, newTag, and the index of its digest line."""
    entries: list[dict] = []
    for i, line in enumerate(lines):
        m = FIELD.match(line)
        if not m:
            continue
        key, value = m["key"], m["value"].strip("\"'")
        if key == "name" and line.lstrip().startswith("- "):
            entries.append({"name": value})
        elif entries:
            entries[-1][key] = value
            if key == "digest":
                entries[-1]["digest_line"] = i
    return entries


def _reference(entry: dict) -> str:
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def resolve(reference: str) -> str:
    """The registry's digest of ``reference`` (the index digest for multi-arch images)."""
    if shutil.which("crane"):
        out = subprocess.run(["crane", "digest", reference], capture_output=True, text=True)
        digest = out.stdout.strip()
    elif shutil.which("docker"):
        out = subprocess.run(
            [
                "docker",
                "buildx",
                "imagetools",
                "inspect",
                reference,
                "--format",
                "{{json .Manifest}}",
            ],
            capture_output=True,
            text=True,
        )
        digest = json.loads(out.stdout or "{}").get("digest", "") if out.returncode == 0 else ""
    else:
        sys.exit("pin-images: need `crane` or `docker` on PATH to resolve digests")
    if out.returncode != 0 or not DIGEST.match(digest):
        sys.exit(f"pin-images: could not resolve {reference}: {out.stderr.strip()[:300]}")
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if unresolved")
    parser.add_argument("--digest", action="append", default=[], metavar="NAME=sha256:...")
    parser.add_argument("--no-resolve", action="store_true", help="do not ask the registry")
    args = parser.parse_args(argv)

    lines = args.file.read_text().splitlines(keepends=True)
    entries = _entries(lines)
    missing = [e for e in entries if "newTag" not in e or "digest_line" not in e]
    if missing:
        print(f"pin-images: entries without newTag or digest: {missing}", file=sys.stderr)
        return 1
    if args.check:
        bad = [
            _reference(e)
            for e in entries
            if not DIGEST.match(FIELD.match(lines[e["digest_line"]])["value"])
            or FIELD.match(lines[e["digest_line"]])["value"] == UNRESOLVED
        ]
        for ref in bad:
            print(f"unresolved digest: {ref}", file=sys.stderr)
        return 1 if bad else 0

    given = {}
    for item in args.digest:
        name, _, digest = item.partition("=")
        if not DIGEST.match(digest):
            print(f"pin-images: {item}: not NAME=sha256:<64 hex>", file=sys.stderr)
            return 1
        given[name] = digest
    known = {e["name"] for e in entries} | {e.get("newName") for e in entries}
    unknown = sorted(set(given) - known)
    if unknown:
        print(f"pin-images: no image entry named {unknown}", file=sys.stderr)
        return 1
    for e in entries:
        digest = given.get(e["name"]) or given.get(e.get("newName", ""))
        if digest is None:
            if args.no_resolve:
                continue
            digest = resolve(_reference(e))
        i = e["digest_line"]
        m = FIELD.match(lines[i])
        lines[i] = lines[i][: m.start("value")] + digest + lines[i][m.end("value") :]
        print(f"{_reference(e)}@{digest}")
    args.file.write_text("".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
