"""Matching on what the user pays (`--match train-time|latency|memory`): the single-dimension
models sized to the compound model's measured cost, the measurements recorded, and a re-plan
that re-uses them instead of measuring again; `effscale profile --match NAME --by COST`."""

import pytest

from effscale.experiments import match_cost
from effscale.experiments.plan import (matched_plan, recorded_measurements, replan_models,
                                       resolve_config)
from effscale.experiments.study import study
from effscale.io.records import load_study
from effscale.model import measure as measure_module
from effscale.model.profile import macs_of

TINY = {"base": "b0@phi=-6,r=0.1652", "data": "digits", "stem_stride": 1, "levels": "2.5",
        "strategies": "baseline,width,compound", "seeds": 1, "epochs": 1, "subset": 160,
        "val_subset": 80, "jobs": 1, "max_mismatch": 0.25, "match": "train-time"}


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test measures (or fakes) its own: no values from another test's search."""
    monkeypatch.setattr(match_cost, "_CACHE", {})


def _no_measuring(*args, **kwargs):
    raise AssertionError("measured again")


@pytest.fixture(scope="module")
def matched_study(tmp_path_factory):
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("match") / "study"
    try:
        study(dict(TINY, out=str(out)), command="test", report=False, echo=lambda *a: None)
    finally:
        torch.set_num_threads(before)
    return out


def test_train_time_match_records_what_it_measured_within_the_tolerance(matched_study):
    record = load_study(matched_study)
    assert record["config"]["match"] == "train-time"
    matched = record["matched"]
    assert matched["on"] == "train-time" and matched["device"] == "cpu"
    assert matched["batch"] == 64 and matched["unit"] == "ms/img"
    values = matched["measurements"]
    models = {m["strategy"]: m for m in record["models"]}
    compound, width = models["compound"], models["width"]
    assert "matched_on" not in models["baseline"] and "cost_ratio" not in compound
    assert width["matched_on"] == "train-time"
    assert width["cost_ratio"] == round(values[width["model"]] / values[compound["model"]], 4)
    assert abs(width["cost_ratio"] - 1) <= 0.25
    # the search measured the MACs match first, and kept the one nearest the target
    ratios = {n: values[n] / values[compound["model"]] for n in values if n.startswith("b0@w=")}
    assert min(ratios, key=lambda n: (abs(ratios[n] - 1), n)) == width["model"]
    # the models it chose keep their measured cost, so the study measured only the baseline
    assert set(record["measured"]) == {m["model"] for m in record["models"]}
    assert all((matched_study / "runs" / key / "summary.json").is_file()
               for key in record["runs"])


def test_replanning_reuses_the_recorded_measurements(matched_study, monkeypatch):
    monkeypatch.setattr(measure_module, "measure", _no_measuring)
    monkeypatch.setattr(match_cost, "measure_entries", _no_measuring)
    record = load_study(matched_study)
    config = resolve_config(dict(record["config"], out=str(matched_study)))
    assert recorded_measurements(record) == record["matched"]["measurements"]
    now = [match_cost.model_entry(dict(vars(m), ratio=round(m.ratio, 4)))
           for m in replan_models(config, record)]
    assert now == record["models"]
    # re-running the command trains nothing and measures nothing
    printed = []
    study(dict(record["config"], out=str(matched_study)), command="test", report=False,
          echo=printed.append)
    assert any("3 of 3 runs already finished" in str(line) for line in printed)
    assert load_study(matched_study)["matched"] == record["matched"]


def test_an_old_record_without_match_replans_on_macs():
    config = resolve_config({k: v for k, v in TINY.items() if k != "match"})
    assert config.match == "macs" and "match" not in config.as_dict()
    assert recorded_measurements({"config": config.as_dict()}) is None
    assert resolve_config(dict(TINY)).as_dict()["match"] == "train-time"


def _fake_entries(names, *, device, batch, num_classes, in_chans, stem_stride, **kwargs):
    """Training time that grows as MACs^0.8 (no timing: the CLI test checks the wiring)."""
    return {n: {"train_img_s": 1e9 / macs_of(n, stem_stride=stem_stride,
                                              num_classes=num_classes,
                                              in_chans=in_chans) ** 0.8} for n in names}


def test_profile_match_by_train_time_prints_measured_ratios(run_cli, monkeypatch):
    monkeypatch.setattr(match_cost, "measure_entries", _fake_entries)
    code, out, err = run_cli("profile", "--match", "b0@phi=1", "--by", "train-time",
                             "--format", "csv")
    assert code == 0, err
    lines = out.strip().splitlines()
    header = lines[0].split(",")
    assert "cost_ratio" in header and "ratio" in header
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    assert len(rows) == 5
    for row in rows:  # width, compound and fast reach within 2% on their 0.01 grid
        ratio = float(row["cost_ratio"])
        coarse = row["model"].startswith(("b0@d=", "b0@res="))  # whole blocks, pixels
        assert abs(ratio - 1) <= (0.1 if coarse else 0.02), row
    code, out, _ = run_cli("profile", "--match", "b0@phi=1", "--by", "train-time")
    assert "cost_ratio: measured train-time (ms/img) / b0@phi=1's, on cpu" in out


@pytest.mark.parametrize("argv, words", [
    (["study", "--match", "flops"], "invalid choice"),
    (["study", "--match", "latency", "--strategies", "baseline,width", "--dry-run", "--no-estimate"],
     "add compound to --strategies"),
    (["profile", "b0", "--by", "latency"], "only used with --match"),
])
def test_bad_match_input_is_one_line_and_exit_2(run_cli, argv, words):
    code, out, err = run_cli(*argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and words in err


def test_a_cost_far_off_is_refused_with_the_measured_ratio(monkeypatch):
    def big_width(names, **kwargs):  # every width model 3x the compound model's memory
        return {n: {"peak_mib": 30.0 if "@w=" in n else 10.0} for n in names}
    monkeypatch.setattr(match_cost, "measure_entries", big_width)
    config = resolve_config(dict(TINY, strategies="width,compound", match="memory",
                                 max_mismatch=0.1))
    with pytest.raises(ValueError) as info:
        matched_plan(config, 10, 1, echo=lambda *a: None)
    text = str(info.value)
    assert "memory not matched within 10%" in text and "3.000x the compound" in text
    assert "vary by a few percent" in text and "--max-mismatch (e.g. 0.1 for time)" in text
