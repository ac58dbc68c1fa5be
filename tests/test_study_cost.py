"""Measured cost beside FLOPs: every study measures each model once (train/infer img/s,
batch-1 latency, peak memory) into study.json, never again on a re-run, outside the training
plan; the tables and figures show it; a finished study can be re-profiled without training."""

import csv
import json
from pathlib import Path

import pytest

from effscale.experiments import cost
from effscale.experiments.study import plan_differences, study
from effscale.io.records import load_study
from effscale.model import measure as measure_module
from effscale.reporting.pages import report

TINY = {"base": "b0@phi=-6,r=0.1652", "data": "digits", "levels": "2.5",
        "strategies": "baseline,width", "seeds": 1, "epochs": 1, "subset": 160,
        "val_subset": 80, "jobs": 1}
KEYS = {"train_img_s", "infer_img_s", "latency_ms", "latency_p90_ms", "peak_mib", "batch",
        "device", "precision", "peak_method"}


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured again")


@pytest.fixture(scope="module")
def measured_study(tmp_path_factory):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cost") / "study"
    study(dict(TINY, out=str(out)), command="test", report=False, echo=lambda *a: None)
    torch.set_num_threads(before)
    return out


def _csv(out: Path) -> list[dict]:
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_study_measures_every_model_once_into_its_record(measured_study):
    record = load_study(measured_study)
    assert record["config"]["measure"] is True
    assert set(record["measured"]) == {m["model"] for m in record["models"]}
    for m in record["measured"].values():
        assert KEYS <= set(m)
        assert m["device"] == "cpu" and m["batch"] == 64 and m["threads"] == 1
        assert m["train_img_s"] > 0 and m["latency_p90_ms"] >= m["latency_ms"] > 0
        assert m["peak_mib"] > 0 and m["hardware"].startswith("cpu")


def test_results_gain_the_measured_columns_and_two_figures(measured_study):
    record = load_study(measured_study)
    rows = _csv(measured_study)
    columns = {"train_img_s", "latency_ms", "peak_mib", "measure_device", "wall_time_s"}
    assert columns <= set(rows[0])
    for row in rows:
        m = record["measured"][row["model"]]
        assert float(row["train_img_s"]) == m["train_img_s"] and row["measure_device"] == "cpu"
        assert float(row["latency_ms"]) == m["latency_ms"] and float(row["wall_time_s"]) > 0
    for stem in ("accuracy_vs_train_time", "accuracy_vs_latency"):
        for ext in ("png", "svg"):
            assert (measured_study / "plots" / f"{stem}.{ext}").stat().st_size > 1000
    md = (measured_study / "results.md").read_text()
    assert "| latency (ms, cpu) |" in md and "Measured cost, once per model" in md
    report(measured_study, cams=False, echo=lambda *a: None)
    page = (measured_study / "report.md").read_text()
    assert "measured batch-1 inference latency (median, measured on cpu" in page
    assert "measured training time of one run" in page


def test_a_rerun_measures_nothing_and_the_plan_ignores_the_measurements(measured_study,
                                                                          monkeypatch):
    before = load_study(measured_study)["measured"]
    monkeypatch.setattr(measure_module, "measure", _no_measuring)
    lines = []
    study(dict(TINY, out=str(measured_study)), command="test", report=False, echo=lines.append)
    assert "2 of 2 runs already finished: skipped" in lines
    assert not any("measured the cost" in line for line in lines)
    assert load_study(measured_study)["measured"] == before
    assert plan_differences(measured_study) == []
    # a record without them (as the committed studies made before them) re-plans the same
    record = load_study(measured_study)
    del record["measured"], record["config"]["measure"]
    (measured_study / "study.json").write_text(json.dumps(record))
    assert plan_differences(measured_study) == []
    (measured_study / "study.json").write_text(json.dumps(dict(record, measured=before)))


def test_no_measure_records_none_and_a_finished_study_is_reprofiled(run_cli, tmp_path,
                                                                     monkeypatch, one_thread):
    out = tmp_path / "plain"
    argv = ["study", "--strategies", "baseline", "--seeds", "1", "--epochs", "1", "--subset",
            "160", "--val-subset", "80", "--jobs", "1", "--no-report", "--out", out]
    with monkeypatch.context() as m:
        m.setattr(measure_module, "measure", _no_measuring)
        code, stdout, err = run_cli(*argv, "--no-measure")
    assert code == 0, err + stdout
    record = load_study(out)
    assert record["measured"] == {} and record["config"]["measure"] is False
    assert record["commands"][-1].endswith("--no-measure")
    row = _csv(out)[0]
    assert row["train_img_s"] == row["latency_ms"] == row["peak_mib"] == ""
    assert float(row["wall_time_s"]) > 0
    assert (out / "plots" / "accuracy_vs_train_time.png").is_file()
    assert not (out / "plots" / "accuracy_vs_latency.png").exists()  # nothing to plot
    assert "Cost not measured" in (out / "results.md").read_text()
    assert plan_differences(out) == []
    # re-profile without training: `effscale report DIR --measure`
    stamp = (out / "runs" / "baseline-L1-s0" / "summary.json").stat().st_mtime_ns
    code, stdout, err = run_cli("report", out, "--measure", "--no-cams")
    assert code == 0, err + stdout
    assert "measured the cost of 1 model on cpu" in stdout
    assert set(load_study(out)["measured"]) == {"b0@r=0.1652,phi=-6"}
    assert (out / "runs" / "baseline-L1-s0" / "summary.json").stat().st_mtime_ns == stamp
    assert _csv(out)[0]["latency_ms"] != ""
    assert (out / "plots" / "accuracy_vs_latency.png").is_file()
    assert plan_differences(out) == []
    code, stdout, err = run_cli("report", out, "--device", "cpu")
    assert code == 2 and "--measure" in err


def _fake_measure(calls):
    def fake(names, **kwargs):
        calls.append((list(names), kwargs))
        return [measure_module.Measured(
            name=n, resolution=16, batch=kwargs["batch"], device=kwargs["device"],
            train_img_s=100.0, train_img_s_spread=(90.0, 110.0), infer_img_s=300.0,
            infer_img_s_spread=(290.0, 310.0), latency_ms=2.0, latency_p90_ms=2.5,
            peak_mib=10.0, peak_method="fake", rounds=kwargs["rounds"]) for n in names]
    return fake


def _record(models, **config):
    return {"config": dict({"device": None, "batch_size": None, "precision": None,
                            "stem_stride": 1}, **config),
            "num_classes": 10, "in_chans": 1, "models": [{"model": m} for m in models]}


def test_the_budgets_of_a_study_share_one_measurement_per_model(monkeypatch):
    calls = []
    monkeypatch.setattr(measure_module, "measure", _fake_measure(calls))
    monkeypatch.setattr(cost, "measure_device", lambda *a, **k: "cpu")
    budgets = [_record(["a", "b"], batch_size=32), _record(["a", "b"], batch_size=32)]
    budgets[1]["measured"] = {"a": {"device": "cpu", "train_img_s": 1.0}}
    cost.measure_records(budgets, echo=lambda *a: None)
    assert [c[0] for c in calls] == [["b"]]  # "a" was measured before; "b" once for both
    assert calls[0][1]["batch"] == 32 and calls[0][1]["rounds"] == cost.ROUNDS
    assert budgets[0]["measured"] == budgets[1]["measured"]
    assert budgets[0]["measured"]["a"] == {"device": "cpu", "train_img_s": 1.0}
    cost.measure_records(budgets, echo=lambda *a: None)
    assert len(calls) == 1


def test_a_gpu_study_reprofiled_without_a_gpu_says_it_measured_on_the_cpu(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    calls, said = [], []
    monkeypatch.setattr(measure_module, "measure", _fake_measure(calls))
    gpu = _record(["a"], device="cuda", batch_size=256)
    # while training: a GPU study is not measured on another device
    cost.measure_records([gpu], echo=said.append)
    assert gpu["measured"] == {} and not calls and "no CUDA GPU" in said[-1]
    # re-profiling (measure_models): measured on the CPU, recorded as such
    cost.measure_records([gpu], fallback_cpu=True, echo=said.append)
    assert calls[0][1]["device"] == "cpu" and gpu["measured"]["a"]["device"] == "cpu"
    assert "measured on cpu" in " ".join(said)
