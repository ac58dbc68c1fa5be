"""A study at several training budgets (`--epochs 12,24,48`): parsing, the plan, one pool of
runs, the combined tables and the conclusion computed from them, exact re-planning."""

import json
from pathlib import Path

import pytest

from effscale.experiments.plan import parse_epochs
from effscale.experiments.study import plan_differences, study
from effscale.io.records import load_study
from effscale.reporting import budgets as report_budgets
from effscale.reporting.stats import Comparison


@pytest.mark.parametrize("value, parsed", [
    ("12", 12), (12, 12), ("12,24,48", (12, 24, 48)), ([48, 12, 24, 12], (12, 24, 48)),
    ("24,", 24)])
def test_epochs_parse_to_one_budget_or_several(value, parsed):
    assert parse_epochs(value) == parsed


@pytest.mark.parametrize("value", ["a", "0", "1.5", "12,-3", True, "", None])
def test_bad_epochs_say_why(value):
    with pytest.raises(ValueError, match="epochs"):
        parse_epochs(value)


def test_cli_dry_run_plans_every_budget(run_cli, tmp_path):
    code, out, err = run_cli("study", "--data", "fashion-mnist", "--epochs", "12,24,48",
                             "--dry-run", "--no-estimate", "--out", tmp_path / "s")
    assert code == 0, err
    for epochs in (12, 24, 48):
        assert f"epochs-{epochs}: 6 models x 3 seeds = 18 runs on fashion-mnist, {epochs} " \
               f"epochs each" in out
    assert "3 budgets (12, 24, 48 epochs): 54 runs, trained in one pool" in out
    assert not (tmp_path / "s").exists()  # a dry run writes nothing
    code, out, err = run_cli("study", "--epochs", "12,x", "--dry-run", "--no-estimate")
    assert code == 2 and "epochs" in err and "Traceback" not in err


QUICK = {"base": "b0@phi=-6,r=0.1652", "data": "digits", "levels": "2.5",
         "strategies": "baseline,width,compound", "seeds": 2, "epochs": "1,2",
         "subset": 160, "val_subset": 80, "jobs": 1, "measure": False}


@pytest.fixture(scope="module")
def budget_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("budgets") / "study"
    summary = study(dict(QUICK, out=str(out)), command="test", report=False,
                    echo=lambda *a: None)
    return out, summary


def test_each_budget_is_a_study_and_the_runs_train_in_one_pool(budget_dir):
    out, summary = budget_dir
    record = load_study(out)
    assert record["kind"] == "budgets" and record["budgets"] == [1, 2]
    assert record["wall_time_s"] > 0
    for epochs in (1, 2):
        sub = load_study(out / f"epochs-{epochs}")
        assert sub["config"]["epochs"] == epochs and len(sub["runs"]) == 6
        assert sub["wall_time_shared"] is True and sub["train_size"] == 160
        for key in sub["runs"]:
            run = json.loads((out / f"epochs-{epochs}" / "runs" / key / "summary.json").read_text())
            assert run["status"] == "finished" and run["epochs"] == epochs
        assert (out / f"epochs-{epochs}" / "results.md").is_file()
    assert summary["failed"] == []


def test_combined_tables_and_figure(budget_dir):
    out, _ = budget_dir
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("epochs,strategy,level,model")
    assert len(rows) == 1 + 2 * 3  # one row per budget and model
    md = (out / "results.md").read_text()
    assert "## Conclusion" in md and "At the top budget (2 epochs)" in md
    assert "| strategy | level | 1 ep | 2 ep | change to 2 | plateau |" in md
    assert "Holm-corrected within each budget" in md
    assert (out / "plots" / "accuracy_vs_epochs.png").is_file()
    assert (out / "plots" / "accuracy_vs_epochs.svg").is_file()
    paths = report_budgets.budget_report(out, echo=lambda *a: None)
    html = open(paths["html"]).read()
    assert "Top-1 at each budget" in html and "data:image/png;base64" in html


def test_a_budgets_study_replans_identically_and_reruns_nothing(budget_dir, tmp_path):
    import shutil
    out, _ = budget_dir
    assert plan_differences(out) == []
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    printed = []
    study(dict(QUICK, out=str(copy)), command="test", report=False, echo=printed.append)
    assert "12 of 12 runs already finished: skipped" in printed
    assert (copy / "results.md").read_text() == (out / "results.md").read_text()
    assert load_study(copy)["wall_time_s"] == load_study(out)["wall_time_s"]
    # the check can fail: a sub-study planned otherwise is named with its budget
    record = json.loads((copy / "epochs-2" / "study.json").read_text())
    record["models"][1]["macs"] += 1
    (copy / "epochs-2" / "study.json").write_text(json.dumps(record))
    top = json.loads((copy / "study.json").read_text())
    top["budgets"] = [1, 3]
    (copy / "study.json").write_text(json.dumps(top))
    found = plan_differences(copy)
    assert any(line.startswith("epochs-2: width at level 2.5: macs was") for line in found), found
    assert any(line.startswith("budgets were [1, 3]") for line in found), found


def test_a_single_budget_directory_is_not_mixed_with_a_budgets_study(tmp_path):
    out = tmp_path / "one"
    out.mkdir()
    one = study(dict(QUICK, epochs=1, out=str(out)), command="t", dry_run=True,
                echo=lambda *a: None)["plan"]  # a study at one budget, as it records itself
    (out / "study.json").write_text(json.dumps(one))
    with pytest.raises(ValueError, match="one budget"):
        study(dict(QUICK, out=str(out)), command="t", dry_run=True, echo=lambda *a: None)


# -- the conclusion, from numbers alone -------------------------------------------------------

def _row(strategy, mean, n=3, level="4"):
    return {"strategy": strategy, "level": "1" if strategy == "baseline" else level,
            "model": strategy, "params": 1, "macs": 1, "top1_mean": mean, "top1_std": 0.1,
            "n": n, "planned": 3, "wall_time_s": 10.0}


def _budget(means, verdicts, text="verdict"):
    rows = [_row(s, m) for s, m in means.items()]
    comparisons = [Comparison("4", other, 3, 90.0, 89.0, 1.0, 0.5, 1.5, 0.01, v, 0.04, 4)
                   for other, v in verdicts.items()]
    return {"rows": rows, "comparisons": comparisons, "conclusion": text}


def test_conclusion_near_the_plateau_with_a_stable_ranking():
    same = {"width": "no significant difference"}
    results = {12: _budget({"baseline": 88.0, "width": 90.0, "compound": 91.0}, same),
               24: _budget({"baseline": 88.9, "width": 91.0, "compound": 91.9}, same),
               48: _budget({"baseline": 89.0, "width": 91.2, "compound": 92.1}, same, "TOP")}
    text = report_budgets.conclusion(results)
    assert text.startswith("At the top budget (48 epochs): TOP")
    assert "moved by at most 0.3 points from 24 to 48 epochs" in text
    assert "ranking is the same at every budget (compound > width > baseline)" in text
    assert "verdicts are the same at every budget" in text
    changes = report_budgets.change_rows(results)
    assert [c["plateau"] for c in changes] == ["yes", "yes", "yes"]
    assert changes[1]["change to 48"] == "+0.20"


def test_conclusion_far_from_the_plateau_with_a_changing_verdict():
    results = {12: _budget({"baseline": 88.0, "width": 91.0, "compound": 90.0},
                           {"width": "no significant difference"}),
               24: _budget({"baseline": 89.0, "width": 91.1, "compound": 92.0},
                           {"width": "better"})}
    text = report_budgets.conclusion(results)
    assert "Not yet at the plateau: from 12 to 24 epochs baseline +1.00, compound +2.00" in text
    assert "width" not in text.split("Not yet at the plateau")[1].split("points")[0]
    assert "ranking changes with the budget: 12 epochs: width > compound > baseline; " \
           "24 epochs: compound > width > baseline" in text
    assert "compound vs width at 4: no significant difference at 12, better at 24" in text


def test_conclusion_of_a_partial_study_compares_only_what_every_budget_has():
    none = {"baseline": None, "width": None, "compound": None, "resolution": None}
    results = {12: _budget(none, {}),
               24: _budget({"baseline": None, "width": 91.4, "compound": 91.9,
                            "resolution": None}, {"width": "no significant difference"}),
               48: _budget({"baseline": None, "width": 91.9, "compound": 92.7,
                            "resolution": 92.7}, {"width": "no significant difference",
                                                  "resolution": "no significant difference"})}
    for res in results.values():
        for row in res["rows"]:
            row["n"] = 0 if row["top1_mean"] is None else 3
    text = report_budgets.conclusion(results)
    assert "Not yet at the plateau: from 24 to 48 epochs width +0.50, compound +0.80" in text
    assert "(2 of 4 models not yet measured at both budgets)" in text
    # resolution exists at 48 only: the ranking is compared on width and compound alone
    assert "ranking is the same at every budget (compound > width)" in text
    assert "among the strategies finished at every budget" in text
    assert "verdicts are the same at every budget where they were tested" in text
    assert report_budgets._unfinished(results) == (
        "12 of 12 runs of the 12-epoch budget unfinished, 6 of 12 runs of the 24-epoch "
        "budget unfinished, 3 of 12 runs of the 48-epoch budget unfinished")


def test_longest_runs_start_first():
    """run_cost orders a pooled study: more epochs first, and at equal MACs the deep model
    (29 blocks, 2.8x slower per epoch on the H200) before the shallow ones."""
    from effscale.experiments.runs import run_cost
    cost = {(m, e): run_cost(dict(model=f"b0@{m},res=36,phi=-10", data="fashion-mnist",
                                   epochs=e))
            for m in ("d=9.29", "w=2.3") for e in (24, 48)}
    assert cost[("d=9.29", 48)] > cost[("d=9.29", 24)] > cost[("w=2.3", 48)] > cost[("w=2.3", 24)]
    # big models: the arithmetic rules
    assert run_cost(dict(model="b3", epochs=1)) > 4 * run_cost(dict(model="b0", epochs=1))
    assert run_cost(dict(model="nonsense")) == 0.0


def test_combined_tables_carry_the_measured_cost(tmp_path):
    """The committed GPU budgets study, with a cost measured per model written into its
    sub-studies' records: results.csv gives each model's measured cost and the measured-cost
    table each budget's mean training time per run."""
    import csv
    import shutil
    src = Path(__file__).resolve().parents[1] / "results" / "fashion-mnist-gpu"
    out = tmp_path / "gpu"
    shutil.copytree(src, out)
    for sub_dir in out.glob("epochs-*"):
        record = load_study(sub_dir)
        record["measured"] = {m["model"]: {
            "train_img_s": 1e9 / m["macs"], "infer_img_s": 3e9 / m["macs"],
            "latency_ms": m["macs"] / 1e6, "latency_p90_ms": m["macs"] / 9e5,
            "peak_mib": m["params"] / 1e5, "batch": 256, "device": "cuda",
            "precision": "bf16", "peak_method": "cuda: max_memory_allocated", "rounds": 2,
            "hardware": "test"} for m in record["models"]}
        (sub_dir / "study.json").write_text(json.dumps(record))
    res = report_budgets.write_budget_results(out)
    sub = load_study(out / "epochs-48")
    rows = list(csv.DictReader(open(out / "results.csv")))
    for r in rows:
        measured = sub["measured"][r["model"]]
        assert float(r["train_img_s"]) == pytest.approx(measured["train_img_s"], rel=1e-6)
        assert float(r["latency_ms"]) == pytest.approx(measured["latency_ms"], rel=1e-6)
        assert r["measure_device"] == measured["device"]
    compound = [k for k, run in sub["runs"].items() if run["strategy"] == "compound"]
    times = [json.loads((out / "epochs-48" / "runs" / k / "summary.json").read_text())
             ["wall_time_s"] for k in compound]
    line = next(r for r in report_budgets.cost_rows(res["results"])
                if r["strategy"] == "compound")
    assert line["train time 48 ep (s)"] == f"{sum(times) / len(times):.0f}"
    assert line["model"] == "phi=3.84"
    assert "## Measured cost" in (out / "results.md").read_text()
