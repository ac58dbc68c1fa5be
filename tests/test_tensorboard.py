"""TensorBoard: a run's event files hold every metrics.csv column, at each epoch, with its value."""

import csv

import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator)

import effscale  # noqa: E402
from effscale.training import METRIC_FIELDS  # noqa: E402


def test_every_metric_is_a_scalar_at_its_epoch(tmp_path, one_thread):
    out = tmp_path / "run"
    effscale.train(model="b0@phi=-6,r=0.1652", data="digits", stem_stride=1, epochs=2,
                   subset=160, val_subset=80, out=str(out), quiet=True)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    columns = [c for c in rows[0] if c != "epoch"]
    assert set(columns) == set(METRIC_FIELDS) - {"epoch"}

    board = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    board.Reload()
    tags = set(board.Tags()["scalars"])
    assert set(columns) <= tags, f"missing from TensorBoard: {sorted(set(columns) - tags)}"
    for column in columns:
        events = board.Scalars(column)
        assert [e.step for e in events] == [1, 2], column
        for event, row in zip(events, rows):
            assert event.value == pytest.approx(float(row[column]), rel=1e-6, abs=1e-6), column
