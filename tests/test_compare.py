"""effscale compare: studies, a budgets study and searches in one table and one plot; mixing
datasets is refused; outputs never replace an input or a file of another kind."""

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from effscale.reporting.compare import compare_rows
from test_report import make_fake_study

ROOT = Path(__file__).resolve().parents[1]
GPU_STUDY = ROOT / "results" / "fashion-mnist-gpu"  # a committed budgets study


def _two_studies(tmp_path):
    a = make_fake_study(tmp_path / "a", compound_gain=+2.0)
    b = make_fake_study(tmp_path / "b", compound_gain=-1.0, seeds=2)
    return a, b


def _hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_compare_two_studies_by_hand(run_cli, tmp_path):
    a, b = _two_studies(tmp_path)
    out = tmp_path / "cmp"
    code, stdout, err = run_cli("compare", a, b, "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "compare.csv")))
    plan = json.loads((a / "study.json").read_text())
    assert len(rows) == 2 * len(plan["models"])
    # the fake runs' final top-1 is base + 0.3 * seed (+0.1 on odd compound seeds): the mean
    # over seeds 0, 1, 2 of compound with gain +2 is 84 + 0.3 + 0.1/3; with gain -1 over seeds
    # 0, 1 it is 81 + 0.15 + 0.05
    compound = {r["source"]: float(r["top1_mean"]) for r in rows if r["strategy"] == "compound"}
    # both directories are named "study": the sources say which is which
    assert compound == pytest.approx({"a/study": 84.3 + 0.1 / 3, "b/study": 81.2}, abs=1e-3)
    width = [float(r["top1_mean"]) for r in rows if r["strategy"] == "width"]
    assert width == pytest.approx([82.8, 82.65], abs=1e-3)
    assert "| compound |" in stdout and "84.33 ± 0.31" in stdout  # std of 84.0, 84.4, 84.6
    for name in ("compare.md", "accuracy_vs_macs.png", "accuracy_vs_macs.svg"):
        assert (out / name).stat().st_size > 0
    assert (out / "accuracy_vs_macs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_reads_every_budget_of_a_budgets_study():
    rows = compare_rows([GPU_STUDY])
    record = json.loads((GPU_STUDY / "study.json").read_text())
    assert sorted({r["epochs"] for r in rows}) == record["budgets"]
    sub = GPU_STUDY / "epochs-48"
    plan = json.loads((sub / "study.json").read_text())
    finals = [json.loads((sub / "runs" / k / "summary.json").read_text())["final_top1"]
              for k, r in plan["runs"].items() if r["strategy"] == "compound"
              and (sub / "runs" / k / "summary.json").is_file()]
    row = next(r for r in rows if r["epochs"] == 48 and r["strategy"] == "compound")
    assert row["n"] == len(finals) == 3
    assert row["top1_mean"] == pytest.approx(sum(finals) / len(finals), abs=1e-3)


def test_compare_refuses_mixed_datasets_unless_asked(run_cli, tmp_path):
    a, b = _two_studies(tmp_path)
    record = json.loads((b / "study.json").read_text())
    assert record["config"]["data"] == "digits"
    record["config"]["data"] = "fashion-mnist"
    (b / "study.json").write_text(json.dumps(record))
    code, stdout, err = run_cli("compare", a, b)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and "different datasets (digits, fashion-mnist)" in err
    assert "--allow-mixed" in err and "Traceback" not in err
    code, stdout, err = run_cli("compare", a, b, "--allow-mixed")
    assert code == 0 and "| digits |" in stdout and "| fashion-mnist |" in stdout


def test_compare_bad_input_is_one_line_and_touches_nothing(run_cli, tmp_path):
    a, b = _two_studies(tmp_path)
    code, _, err = run_cli("compare", a, tmp_path)
    assert code == 2 and "is not a study or search directory" in err and err.count("\n") == 1
    before = {p: _hash(p) for p in a.rglob("*") if p.is_file()}
    code, _, err = run_cli("compare", a, b, "--out", a)  # into a compared directory
    assert code == 2 and "one of the compared directories" in err
    assert {p: _hash(p) for p in a.rglob("*") if p.is_file()} == before
    out = tmp_path / "cmp"
    out.mkdir()
    shutil.copy(ROOT / "results" / "fashion-mnist" / "plots" / "accuracy_vs_macs.png",
                out / "compare.csv")  # someone's picture under the name compare writes
    kept = _hash(out / "compare.csv")
    code, _, err = run_cli("compare", a, b, "--out", out)
    assert code == 2 and "refusing to replace" in err and "PNG" in err
    assert _hash(out / "compare.csv") == kept and not (out / "compare.md").exists()


def test_readme_compare_example_runs(run_cli, tmp_path, monkeypatch):
    block = (ROOT / "README.md").read_text().split("## Report", 1)[1].split("```")[1]
    commands = [line.split("#")[0].split()[1:] for line in block.splitlines()
                if line.startswith("effscale compare")]
    assert commands
    monkeypatch.chdir(ROOT)  # the README's paths are relative to the repository
    for argv in commands:
        argv = [str(tmp_path / "out") if i and argv[i - 1] == "--out" else a
                for i, a in enumerate(argv)]
        code, stdout, err = run_cli(*argv)
        assert code == 0, err
        assert (tmp_path / "out" / "compare.csv").is_file() and "| compound |" in stdout
