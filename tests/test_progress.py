"""Long steps report progress: a bar on a terminal, a line every few seconds in a log."""

from __future__ import annotations

import logging

import torch

from plants_mlops import progress
from plants_mlops.model import probe
from plants_mlops.model.architectures import build_model


def test_off_a_terminal_progress_is_a_log_line_every_few_seconds(caplog, monkeypatch):
    clock = iter([0.0, 1.0, 12.0, 13.0, 25.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO)
    with progress.Progress(100, "embeddings", logging.getLogger("t")) as done:
        for _ in range(4):
            done.update(20)
    lines = [r.getMessage() for r in caplog.records if r.name == "t"]
    # at 12 s (40 done) and 25 s (80 done), not at 1 s or 13 s (10 s apart at least)
    assert lines == [
        "embeddings: 40/100 img (40%), 12 s, about 18 s left",
        "embeddings: 80/100 img (80%), 25 s, about 6 s left",
    ]


def test_the_probes_embeddings_report_progress_in_the_log(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO)
    model = build_model("small_cnn", n_classes=2, image_size=32, weights=None)
    cpu = torch.device("cpu")
    with probe.frozen_backbone(model, cpu, 32) as backbone:
        emb = probe.embed(backbone, torch.zeros(10, 3, 32, 32), cpu, hflip=False, batch_size=4)
    assert emb.shape[0] == 10
    lines = [r.getMessage() for r in caplog.records if "probe embeddings" in r.getMessage()]
    # after the first and the second batch of 4; the end is the training log's own line
    assert [line.split(" img")[0] for line in lines] == [
        "probe embeddings: 4/10",
        "probe embeddings: 8/10",
    ]
