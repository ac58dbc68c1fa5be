"""Every committed results directory is what the code that ships it would produce: re-planned
with the current code (no training), nothing differs, and re-running its command trains nothing
and rewrites identical tables."""

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from effscale.experiments.runs import run_status
from effscale.experiments.study import plan_differences, study
from effscale.io.records import load_study

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent for p in (ROOT / "results").glob("**/study.json"))
RECORD_FILES = ("config.json", "metrics.csv", "summary.json")


def _run_dirs(study_dir: Path) -> list[Path]:
    """Every planned run directory of a study, or of each budget of a budgets study."""
    record = load_study(study_dir)
    if record.get("kind") == "budgets":
        return [d for name in record["studies"].values() for d in _run_dirs(study_dir / name)]
    return [study_dir / "runs" / key for key in record["runs"]]


@pytest.mark.parametrize("study_dir", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_results_replan_identically(study_dir):
    """Without the dataset's files: the record keeps what re-planning reads."""
    assert "train_size" in load_study(study_dir) or load_study(study_dir)["kind"] == "budgets"
    assert plan_differences(study_dir) == []
    for run in _run_dirs(study_dir):  # a run is committed whole or not at all
        present = [(run / name).is_file() for name in RECORD_FILES]
        assert all(present) or not any(present), f"{run}: {present}"


@pytest.mark.parametrize("study_dir", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_rerunning_a_committed_study_trains_nothing_and_rewrites_identical_tables(
        study_dir, tmp_path):
    copy = tmp_path / study_dir.name
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns(
        "*.safetensors", "*.pt", "logs", "report.*"))
    record = load_study(copy)
    runs = _run_dirs(copy)
    finished = [run for run in runs if run_status(run) == "finished"]
    if len(finished) < len(runs):  # a study committed part by part: never train here
        pytest.skip(f"{len(finished)} of {len(runs)} runs committed so far")
    printed = io.StringIO()
    with redirect_stdout(printed):
        study(dict(record["config"], out=str(copy)), command=record["commands"][-1],
              report=False)
    n = len(runs)
    assert f"{n} of {n} runs already finished: skipped" in printed.getvalue()
    for name in ("results.csv", "results.md"):
        assert (copy / name).read_text() == (study_dir / name).read_text(), name
    after = load_study(copy)
    assert after["environment"] == record["environment"]  # still the machine that trained it
    assert after["wall_time_s"] == record["wall_time_s"]


def test_a_changed_plan_is_caught(tmp_path):
    """The check can fail: a study directory whose recorded plan differs from what the current
    code plans (here, a model's MACs and a run's learning rate) is reported line by line."""
    out = tmp_path / "study"
    study({"base": "b0@phi=-6,r=0.1652", "data": "digits", "levels": "2.5",
           "strategies": "baseline,width", "seeds": 1, "epochs": 1, "subset": 100,
           "val_subset": 50, "jobs": 1, "measure": False, "out": str(out)}, dry_run=False,
          report=False, command="test", echo=lambda *a: None)
    assert plan_differences(out) == []
    record = json.loads((out / "study.json").read_text())
    record["models"][1]["macs"] += 1
    (out / "study.json").write_text(json.dumps(record))
    run = next(iter(record["runs"]))
    saved = out / "runs" / run / "config.json"
    config = json.loads(saved.read_text())
    saved.write_text(json.dumps(dict(config, lr=config["lr"] * 2)))
    found = plan_differences(out)
    assert any("width at level 2.5: macs was" in line for line in found), found
    assert any(line.startswith(f"{run}: lr was") for line in found), found
