"""Curation: near-duplicates, label issues, outliers, the review queue; decisions recorded
in the database and honoured by formatting; the leakage rule in validation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
from data_testlib import read_json
from PIL import ImageEnhance
from support.params import stage_params, task_params

from plants_mlops import cli
from plants_mlops.pipelines.curation.nodes import near_duplicate_pairs
from plants_mlops.pipelines.validation.nodes import leakage_rule


def hash_bits(hex_hashes: list[str]) -> np.ndarray:
    """[N, 64] bool: the bits of each 16-hex-digit hash (the plain definition the word
    search is checked against)."""
    raw = np.array([bytes.fromhex(h) for h in hex_hashes], dtype="S8")
    return np.unpackbits(np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 8), axis=1)


def test_curation_writes_a_ranked_review_queue_and_its_page(data_project):
    data = data_project.path / "data"
    queue = read_json(data / "08_reporting" / "curation_queue.json")
    report = read_json(data / "08_reporting" / "curation_report.json")
    summary = read_json(data / "08_reporting" / "curation_summary.json")
    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    assert report["images"] == len(index) == summary["counts"]["images"]
    assert report["cv_images"] == int(index["split"].isin(["train", "val"]).sum())
    assert 0 < len(queue) <= stage_params("curation")["queue"]["max_items"]
    assert [it["rank"] for it in queue] == list(range(1, len(queue) + 1))
    scores = [it["score"] for it in queue]
    assert scores == sorted(scores, reverse=True)
    # every queued image names its problem, the rows it comes from and a suggested action
    by_key = index.set_index("image_key")
    for it in queue:
        assert it["problems"] and it["action"]
        assert by_key.loc[it["image_key"], "source_id"] == it["source_id"]
    issues = [it for it in queue if any(p.startswith("label_issue") for p in it["problems"])]
    assert report["label_issues"] >= len(issues) > 0
    for it in issues:  # out-of-fold: the folds doubt the given label
        assert it["probabilities"][it["label"]] < 0.5
        assert it["action"].startswith("relabel ")
        # why: the evidence grid of the label the folds chose (a 4 x 4 map at 128 px), an
        # exact split of its logit margin, which is positive since that label won
        assert it["action"] == f"relabel {it['explanation']['label']}"
        grid = np.asarray(it["explanation"]["grid"])
        assert grid.shape == (4, 4) and grid.mean() > 0
    outliers = [it for it in queue if any(p.startswith("outlier") for p in it["problems"])]
    share = stage_params("curation")["outliers"]["share"]
    assert len(outliers) == report["outliers"]  # the queue holds them all (max_items > 25)
    assert abs(report["outliers"] - share * len(index)) <= 1
    page = (data / "08_reporting" / "curation_review.html").read_text()
    assert page.count("data:image/jpeg;base64,") == len(queue) + len(issues)
    assert page.count('title="regions that speak for ') == len(issues)
    assert f"<td>{queue[0]['source_id']}</td>" in page
    assert summary["stage"] == "curation" and summary["verdict"] == "ok"
    near = read_json(data / "03_primary" / "near_duplicates.json")
    assert near["straddling"] == [] and report["near_duplicate_pairs_straddling"] == 0
    checks = read_json(data / "08_reporting" / "validation_report.json")["checks"]
    leak = next(c for c in checks if c["rule"] == "near_duplicates_straddle_test")
    assert leak["passed"]


def test_curation_rerun_reuses_the_embedding_cache(data_project, caplog):
    data = data_project.path / "data"
    n = len(pd.read_parquet(data / "03_primary" / "dataset_index.parquet"))
    cached = pd.read_parquet(data / "04_feature" / "curation_embeddings.parquet")
    assert len(cached) == n and len(cached["embedding"].iloc[0]) == 1280
    before = read_json(data / "08_reporting" / "curation_queue.json")
    with caplog.at_level("INFO", logger="plants_mlops.pipelines.curation.nodes"):
        data_project.run("curation")
    assert any(f"({n} from the cache)" in r.getMessage() for r in caplog.records)
    after = read_json(data_project.path / "data" / "08_reporting" / "curation_queue.json")
    assert after == before  # same data, same seed: the same queue


def test_a_near_copy_straddling_test_fails_validation_naming_the_pair(data_project):
    import imagehash
    from PIL import Image

    data = data_project.path / "data"
    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    train = index[index["split"] == "train"].iloc[0]
    img = Image.open(data / "02_intermediate" / "fmt_images" / f"{train.image_key}.jpg")
    copy = ImageEnhance.Brightness(img).enhance(1.1)  # a re-encoded, brightened copy
    fake = train.copy()
    fake["image_key"], fake["sha256"], fake["split"], fake["source_id"] = (
        f"{train.label}/{'f' * 64}",
        "f" * 64,
        "test",
        9999,
    )
    both = pd.concat([index, fake.to_frame().T], ignore_index=True)
    hashes = {
        k: str(imagehash.phash(Image.open(data / "02_intermediate" / "fmt_images" / f"{k}.jpg")))
        for k in index["image_key"]
    }
    hashes[fake["image_key"]] = str(imagehash.phash(copy))
    pairs = near_duplicate_pairs(both, hashes, task_params()["near_duplicates"]["max_distance"])
    assert [(q["a"], q["b"]) for q in pairs] == [(train.image_key, fake["image_key"])]
    check = leakage_rule(both, {"max_distance": 8, "pairs": pairs})
    assert not check["passed"] and check["n_failing"] == 1
    assert train.image_key in check["detail"] and fake["image_key"] in check["detail"]
    assert check["failing_rows"][0].startswith(f"{train.image_key} (train) ~ ")


def test_decisions_flow_through_formatting_and_change_the_fingerprint(data_project, capsys):
    """exclude / relabel from the command line -> formatting leaves the row out / indexes
    it under its new label -> another fingerprint; restore -> the original one. The raw
    bytes are never touched."""
    data = data_project.path / "data"
    url = f"sqlite:///{data / 'plants.db'}"
    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    original = read_json(data / "03_primary" / "dataset_fingerprint.json")["fingerprint"]
    raw_files = sorted(p.relative_to(data) for p in (data / "01_raw").rglob("*.*"))
    gone = index[index["label"] == "dandelion"].iloc[0]
    moved = index[index["label"] == "grass"].iloc[0]

    assert (
        cli.main(["data", "exclude", str(gone.source_id), "--reason", "a poster", "--db-url", url])
        == 0
    )
    assert (
        cli.main(
            [
                "data",
                "relabel",
                str(moved.source_id),
                "dandelion",
                "--reason",
                "flowers",
                "--db-url",
                url,
            ]
        )
        == 0
    )
    assert "the next formatting run applies it" in capsys.readouterr().out
    data_project.run("formatting")
    after = pd.read_parquet(data / "03_primary" / "dataset_index.parquet").set_index("source_id")
    assert gone.source_id not in after.index
    assert after.loc[moved.source_id, "label"] == "dandelion"
    assert after.loc[moved.source_id, "image_key"] == f"dandelion/{moved.sha256}"
    assert len(after) == len(index) - 1
    changed = read_json(data / "03_primary" / "dataset_fingerprint.json")["fingerprint"]
    assert changed != original
    applied = read_json(data / "08_reporting" / "formatting_report.json")["decisions_applied"]
    assert sorted((a["row_id"], a["action"], a.get("to")) for a in applied) == sorted(
        [(gone.source_id, "exclude", None), (moved.source_id, "relabel", "dandelion")]
    )
    assert sorted(p.relative_to(data) for p in (data / "01_raw").rglob("*.*")) == raw_files

    capsys.readouterr()  # the run's log
    assert cli.main(["data", "history", "--json", "--db-url", url]) == 0
    history = json.loads(capsys.readouterr().out)
    assert [(h["row_id"], h["action"], h["reason"]) for h in history] == [
        (gone.source_id, "exclude", "a poster"),
        (moved.source_id, "relabel", "flowers"),
    ]
    for row in (gone.source_id, moved.source_id):
        assert cli.main(["data", "restore", str(row), "--db-url", url]) == 0
    data_project.run("formatting")
    assert read_json(data / "03_primary" / "dataset_fingerprint.json")["fingerprint"] == original


def test_a_decision_on_a_row_applies_to_every_row_holding_the_same_image():
    """Accepted feedback on a photo already in the catalogue makes a second row with the
    same bytes: an exclude of the first left the image in through the second, and a
    relabel of one copy put the two under two labels (both then dropped as a conflict)."""
    from datetime import UTC, datetime, timedelta

    from plants_mlops.pipelines.curation.decisions import apply_decisions

    rows = pd.DataFrame(
        {
            "id": [1, 2, 3, 4, 5],
            "label": ["grass", "grass", "grass", "grass", "dandelion"],
            "sha256": ["a", "a", "b", "b", "c"],
        }
    )
    raw = {f"{r.label}/{r.sha256}.jpg": (lambda s=r.sha256: s.encode()) for r in rows.itertuples()}
    t0 = datetime(2026, 12, 1, tzinfo=UTC)

    def decision(row_id, action, label=None, minutes=0):
        when = t0 + timedelta(minutes=minutes)
        return {"row_id": row_id, "action": action, "label": label, "reason": "r",
                "decided_by": "me", "decided_at": when}  # fmt: skip

    decisions = pd.DataFrame([decision(1, "exclude"), decision(4, "relabel", "dandelion", 1)])
    loaders, kept, applied = apply_decisions(raw, rows, decisions)
    assert kept.set_index("id")["label"].to_dict() == {
        3: "dandelion",
        4: "dandelion",
        5: "dandelion",
    }
    assert "dandelion/b.jpg" in loaders and loaders["dandelion/b.jpg"]() == b"b"
    assert sorted((a["row_id"], a["action"], a.get("decided_on")) for a in applied) == [
        (1, "exclude", 1), (2, "exclude", 1), (3, "relabel", 4), (4, "relabel", 4),
    ]  # fmt: skip
    # the newest decision on any copy is the image's
    later = pd.DataFrame([*decisions.to_dict("records"), decision(2, "relabel", "dandelion", 2)])
    _, kept, _ = apply_decisions(raw, rows, later)
    assert kept.set_index("id")["label"].to_dict() == {
        1: "dandelion", 2: "dandelion", 3: "dandelion", 4: "dandelion", 5: "dandelion",
    }  # fmt: skip


def test_data_review_lists_the_queue_with_the_decisions_taken(data_project, capsys):
    data = data_project.path / "data"
    url = f"sqlite:///{data / 'plants.db'}"
    queue_path = str(data / "08_reporting" / "curation_queue.json")
    queue = read_json(queue_path)
    first = queue[0]
    assert (
        cli.main(
            ["data", "exclude", str(first["source_id"]), "--reason", "checked", "--db-url", url]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["data", "review", "--queue", queue_path, "--db-url", url, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [it["image_key"] for it in listed["queue"]] == [it["image_key"] for it in queue]
    assert listed["queue"][0]["decision"]["action"] == "exclude"
    assert all(it["decision"] is None for it in listed["queue"][1:])
    assert listed["feedback"] == []
    assert cli.main(["data", "review", "--queue", queue_path, "--db-url", url]) == 0
    text = capsys.readouterr().out
    assert f"  1. row {first['source_id']:<5}" in text and "[decided: exclude]" in text
    assert first["problems"][0] in text


def test_a_new_near_copy_joins_the_split_of_the_stored_image(data_project):
    """Formatting's split for near-duplicates: the later image takes the earlier one's
    split, and adding it moves no image that was there before."""
    import imagehash
    from PIL import Image

    from plants_mlops.pipelines.curation.splits import join_near_duplicate_splits
    from plants_mlops.pipelines.formatting.nodes import split_of

    data = data_project.path / "data"
    index = pd.read_parquet(data / "03_primary" / "dataset_index.parquet")
    report = read_json(data / "08_reporting" / "formatting_report.json")
    assert report["near_duplicates_joined_split"] == 0  # no near pair in the shipped data
    assert index["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    split = stage_params("formatting")["split"]
    stored = index[index["split"] == "train"].iloc[0]
    img = Image.open(data / "02_intermediate" / "fmt_images" / f"{stored.image_key}.jpg")
    # a sha256 whose own hash split is test: without the join the pair would leak
    sha = next(s for s in (f"{i:064x}" for i in range(1000)) if split_of(s, split) == "test")
    new = stored.copy()
    new["sha256"], new["image_key"], new["source_id"] = sha, f"{stored.label}/{sha}", 9999
    new["split"] = split_of(sha, split)
    new["phash"] = str(imagehash.phash(ImageEnhance.Contrast(img).enhance(1.15)))
    grown = pd.concat([index, new.to_frame().T], ignore_index=True)
    joined = join_near_duplicate_splits(grown, max_distance=8)
    assert joined.iloc[-1] == stored.split == "train"
    assert list(joined.iloc[:-1]) == list(index["split"])  # nothing stored moved


def test_the_nearest_earlier_hash_is_the_one_every_pair_compared_gives():
    """The block search (XOR + popcount, a 100,000-image index took minutes comparing 64
    booleans per pair) finds, for every hash, the same nearest earlier hash and distance
    as comparing each one with every earlier one, the earliest on a tie, across blocks."""
    from plants_mlops.pipelines.curation.splits import hash_words, nearest_earlier

    rng = np.random.default_rng(7)
    bases = rng.integers(0, 2**63, 6, dtype=np.int64).astype(np.uint64)
    # clustered (a few bits flipped from a few bases: many ties) and exact repeats
    flips = rng.integers(0, 64, (300, 3)).astype(np.uint64)
    words = bases[rng.integers(0, 6, 300)]
    for k in range(3):
        words = words ^ (np.uint64(1) << flips[:, k]) * rng.integers(0, 2, 300).astype(np.uint64)
    hexes = [f"{int(w):016x}" for w in words]
    assert (hash_words(hexes) == words).all()
    nearest, distance = nearest_earlier(hash_words(hexes))
    bits = hash_bits(hexes)
    assert (nearest[0], distance[0]) == (-1, 65)
    for i in range(1, len(hexes)):
        dist = np.count_nonzero(bits[:i] != bits[i], axis=1)
        assert (nearest[i], distance[i]) == (int(np.argmin(dist)), int(dist.min())), i


def test_near_duplicate_pairs_are_every_pair_within_the_distance():
    """Curation's pairs come from the shared block search (XOR + popcount), not a Python
    loop per image: the same pairs, order and fields as comparing every pair of hashes
    bit by bit, on clustered hashes (many pairs, exact repeats) in a shuffled row order."""
    rng = np.random.default_rng(11)
    n = 300
    bases = rng.integers(0, 2**63, 8, dtype=np.int64).astype(np.uint64)
    words = bases[rng.integers(0, 8, n)]
    for bit in rng.integers(0, 64, (4, n)).astype(np.uint64):
        words = words ^ (np.uint64(1) << bit) * rng.integers(0, 2, n).astype(np.uint64)
    index = pd.DataFrame(
        {
            "image_key": [f"{'dandelion' if k % 3 else 'grass'}/{k:064x}" for k in range(n)],
            "source_id": rng.permutation(n) + 1,
            "label": ["dandelion" if k % 3 else "grass" for k in range(n)],
            "split": rng.choice(["train", "val", "test"], n).tolist(),
        }
    )
    hashes = dict(zip(index["image_key"], (f"{int(w):016x}" for w in words), strict=True))
    bits = hash_bits([hashes[k] for k in index["image_key"]])
    rows = index.to_dict(orient="records")
    for max_distance in (0, 3, 8):
        expected = []
        for i in range(n):
            for j in range(i + 1, n):
                dist = int(np.count_nonzero(bits[i] != bits[j]))
                if dist <= max_distance:
                    a, b = sorted((rows[i], rows[j]), key=lambda r: r["source_id"])
                    expected.append(
                        {
                            "a": a["image_key"],
                            "b": b["image_key"],
                            "a_source_id": int(a["source_id"]),
                            "b_source_id": int(b["source_id"]),
                            "a_split": a["split"],
                            "b_split": b["split"],
                            "distance": dist,
                            "same_label": a["label"] == b["label"],
                        }
                    )
        assert expected, max_distance
        assert near_duplicate_pairs(index, hashes, max_distance) == expected, max_distance


# Runs the curation node on 120 synthetic embeddings (two clusters, 6 labels swapped) and
# counts the forks it makes.
_FORK_PROBE = """
import json, os, sys
import numpy as np
import pandas as pd

forks = []
os.register_at_fork(before=lambda: forks.append(1))
from plants_mlops.pipelines.curation.nodes import find_issues

rng = np.random.default_rng(3)
n = 120
truth = np.arange(n) % 2
labels = truth.copy()
labels[:6] = 1 - labels[:6]
emb = rng.normal(0.0, 1.0, (n, 16)) + np.where(truth[:, None] == 0, 2.0, -2.0)
names = np.array(["dandelion", "grass"])[labels]
sha = [f"{i:064x}" for i in range(n)]
keys = [f"{lab}/{s}" for lab, s in zip(names, sha)]
split = np.where(np.arange(n) % 10 == 9, "test", np.where(np.arange(n) % 10 == 8, "val", "train"))
index = pd.DataFrame({"image_key": keys, "label": names, "split": split, "source_id": np.arange(n) + 1,
                      "sha256": sha, "url_source": [f"https://x/{i}.jpg" for i in range(n)]})
features = pd.DataFrame({"image_key": keys, "embedding": list(emb.astype(np.float32)),
                         "phash": [f"{int(w):016x}" for w in rng.integers(0, 2**63, n)]})
queue, near, report = find_issues(features, index, *json.loads(sys.argv[1]))
print(json.dumps({"forks": len(forks), "label_issues": report["label_issues"]}))
"""


def test_curation_finds_label_issues_without_forking_the_process():
    """cleanlab's find_label_issues forks a worker pool (one per core) by default. A fork
    of a process holding threads (torch's, MLflow's, ZenML's) is unsafe, and with a Python
    SIGTERM handler installed (coverage's, under test) Pool.terminate() can lose the SIGTERM
    of a worker still starting and join it forever: a test run hung there once. The node
    ranks label issues in its own process."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _FORK_PROBE,
            json.dumps([stage_params("curation"), task_params()]),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["label_issues"] > 0  # the cleanlab path ran
    assert found["forks"] == 0
