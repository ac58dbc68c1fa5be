"""Every file effscale reads back is checked before it is trusted: a hand-edited or damaged
summary.json, metrics.csv, config.json, study.json, search.json, model file or boxes file is
one line naming the file and the key, exit 2, no traceback, and every file as it was; model
names with absurd numbers are one line too."""

import csv
import hashlib
import json
import pathlib

import pytest
from safetensors.torch import load_file, save_file

import effscale
import effscale.io.checkpoint as checkpoint
from effscale.experiments.study import study

TINY = dict(model="b0@phi=-6,r=0.1652", data="digits", stem_stride=1, epochs=1, subset=64,
            val_subset=32, quiet=True, device="cpu")
REPLAN = ("--seeds", 2, "--levels", 2.5, "--no-measure", "--jobs", 1)


def hashes(root):
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}  # not the lock, not temporaries


def refused(run_cli, root, *argv, says=()):
    """Run the command; it must end with one line (exit 2, no traceback) containing every
    string of `says`, and leave every file under `root` byte-identical."""
    before = hashes(root)
    code, out, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err and len(lines) == 1, (code, err, out)
    for words in says:
        assert words in lines[0], lines[0]
    assert hashes(root) == before
    return lines[0]


# -- model names ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, says", [
    ("b0@phi=1e4", "phi must be in [-100, 100], got 10000"),
    ("b0@phi=1e308", "phi must be in [-100, 100]"),
    ("b0@phi=-1e308", "phi must be in [-100, 100]"),
    ("b0@w=1e300", "w must be in (0, 100]"),
    ("b0@r=1e300", "r must be in (0, 100]"),
    ("b0@res=1e300", "res must be in (0, 8192]"),
    ("b0@fast=1e300", "fast must be in (0, 1e+06]"),
    ("b0@phi=100,alpha=10", "depth 1e+100 is above the limit 100"),
    ("l2@w=90", "width 387 is above the limit 100"),
])
def test_absurd_model_names_are_one_line(run_cli, tmp_path, name, says):
    line = refused(run_cli, tmp_path, "profile", name, says=(says,))
    assert f"{name!r} scales the network out of range" in line or name in line


def test_a_huge_depth_is_refused_at_once(run_cli, tmp_path):
    # b0@d=1e300 used to enumerate 1e300 blocks: a hang, not an answer
    refused(run_cli, tmp_path, "profile", "b0@d=1e300", says=("d must be in (0, 100]",))


# -- a study's runs: summary.json, metrics.csv, config.json -------------------------------------

@pytest.fixture
def fake_study(tmp_path):
    """A study directory whose runs 'finished' (no training): study.json from a dry run, and
    per run config.json, metrics.csv and summary.json as training writes them."""
    out = tmp_path / "study"
    plan = study(dry_run=True, out=str(out), seeds=2, levels="2.5", measure=False,
                 echo=lambda *a: None, command="effscale study --seeds 2 --levels 2.5")["plan"]
    out.mkdir(parents=True)
    (out / "study.json").write_text(json.dumps(plan, indent=2))
    for key, run in plan["runs"].items():
        d = out / "runs" / key
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(dict(run["train"], out=str(d)), indent=2))
        top1 = 90.0 + run["seed"] + len(run["strategy"]) / 10
        with open(d / "metrics.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", "train_loss", "val_loss", "top1", "top5", "lr"])
            writer.writerows([[1, 0.9, 0.8, top1 - 1, 99.0, 0.1], [2, 0.5, 0.4, top1, 99.5, 0]])
        (d / "summary.json").write_text(json.dumps(dict(
            model=run["model"], data=run["train"]["data"], seed=run["seed"],
            epochs=run["train"]["epochs"],
            recipe=run["train"].get("recipe"), final_top1=top1, best_top1=top1, best_epoch=2,
            final_top5=99.5, final_val_loss=0.4, params=1000, macs=10 ** 6, wall_time_s=3.0,
            images_per_s=100.0, status="finished"), indent=2))
    return out


def _edit_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def test_an_intact_fake_study_reports_and_replans(run_cli, fake_study):
    """The checks refuse nothing that effscale itself wrote (a guard for the tests below)."""
    code, out, err = run_cli("study", *REPLAN, "--out", fake_study, "--dry-run", "--no-estimate")
    assert code == 0, err
    code, out, err = run_cli("report", fake_study, "--no-cams")
    assert code == 0, err
    assert (fake_study / "results.csv").is_file()


SUMMARY_EDITS = [
    (lambda s: s.update(final_top1="high"), "'final_top1': expected a finite number in [0, 100]"),
    (lambda s: s.update(final_top1=1e9), "got 1000000000.0"),
    (lambda s: s.update(final_top1=-3), "'final_top1'"),
    (lambda s: s.pop("final_top1"), "key 'final_top1' is missing"),
    (lambda s: s.pop("status"), "key 'status' is missing"),
    (lambda s: s.update(best_epoch=True), "'best_epoch': expected an integer"),
    (lambda s: s.update(wall_time_s=float("nan")), "'wall_time_s'"),
]


@pytest.mark.parametrize("edit, says", SUMMARY_EDITS, ids=range(len(SUMMARY_EDITS)))
def test_a_hand_edited_summary_is_one_line(run_cli, fake_study, edit, says):
    path = next((fake_study / "runs").iterdir()) / "summary.json"
    _edit_json(path, edit)
    refused(run_cli, fake_study, "report", fake_study, "--no-cams", says=(str(path), says))


def test_a_summary_that_is_not_json_is_one_line(run_cli, fake_study):
    """It used to count as an unfinished run: a table silently missing a seed."""
    path = next((fake_study / "runs").iterdir()) / "summary.json"
    path.write_text('{"status": "finished", "final_top1": 9')
    refused(run_cli, fake_study, "report", fake_study, "--no-cams",
            says=(str(path), "is not valid JSON"))


@pytest.mark.parametrize("rows, says", [
    ([["1", "0.9", "0.8", "high", "99", "0.1"]], "line 2, column 'top1': expected a finite"),
    ([["x", "0.9", "0.8", "90", "99", "0.1"]], "column 'epoch': expected an integer"),
    ([["2", "1", "1", "90", "99", "0"], ["1", "1", "1", "91", "99", "0"]], "epoch 1 after epoch 2"),
    ([["1", "1", "1", "90", "99", "0", "extra"]], "more fields than the header"),
    ([["1", "1", "1", "9000", "99", "0"]], "'top1': expected a finite number in [0, 100]"),
])
def test_a_hand_edited_metrics_csv_is_one_line(run_cli, fake_study, rows, says):
    path = next((fake_study / "runs").iterdir()) / "metrics.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["epoch", "train_loss", "val_loss", "top1", "top5", "lr"],
                                 *rows])
    refused(run_cli, fake_study, "report", fake_study, "--no-cams", says=(str(path), says))


@pytest.mark.parametrize("key, value", [("model", "b0@phi=-1"), ("epochs", 99), ("seed", 7)])
def test_a_run_whose_config_disagrees_with_the_record_is_refused(run_cli, fake_study, key,
                                                                 value):
    """Someone edited runs/<key>/config.json: re-planning (a real run, which would skip the
    'finished' run) and reporting refuse it instead of believing the record."""
    run = sorted((fake_study / "runs").iterdir())[-1]
    _edit_json(run / "config.json", lambda c: c.update({key: value}))
    says = (str(run / "config.json"), f"key {key!r} is {json.dumps(value)}", "study.json planned")
    refused(run_cli, fake_study, "study", *REPLAN, "--out", fake_study, says=says)
    refused(run_cli, fake_study, "report", fake_study, "--no-cams", says=says)


def test_a_summary_of_another_model_is_refused(run_cli, fake_study):
    run = sorted((fake_study / "runs").iterdir())[0]
    _edit_json(run / "summary.json", lambda s: s.update(model="b7"))
    refused(run_cli, fake_study, "report", fake_study, "--no-cams",
            says=(str(run / "summary.json"), "key 'model' is \"b7\""))


# -- the study record itself ------------------------------------------------------------------

def _first_run(record):
    return next(iter(record["runs"].values()))


RECORD_EDITS = [
    (lambda r: r.update(num_classes=10 ** 12), "key 'num_classes': expected an integer in [1"),
    (lambda r: r.update(runs=[]), "key 'runs': expected a JSON object"),
    (lambda r: r.pop("models"), "key 'models' is missing"),
    (lambda r: r["models"][0].update(macs="big"), "key 'models[0].macs'"),
    (lambda r: _first_run(r).update(seed="zero"), ".seed': expected an integer"),
    (lambda r: _first_run(r).update(strategy="sideways"), "is not among the record's models"),
    (lambda r: r["runs"].update({"../../elsewhere": _first_run(r)}), "expected a plain file name"),
    (lambda r: r["config"].update(epochs=10 ** 9), "key 'config.epochs'"),
    (lambda r: r.update(kind="weird"), "key 'kind': expected one of"),
]


@pytest.mark.parametrize("edit, says", RECORD_EDITS, ids=range(len(RECORD_EDITS)))
def test_a_hand_edited_study_record_is_one_line(run_cli, fake_study, edit, says):
    _edit_json(fake_study / "study.json", edit)
    says = (str(fake_study / "study.json"), says)
    refused(run_cli, fake_study, "report", fake_study, "--no-cams", says=says)
    refused(run_cli, fake_study, "study", *REPLAN, "--out", fake_study, "--dry-run", "--no-estimate", says=says)


def test_a_study_record_that_is_not_json_is_one_line(run_cli, fake_study):
    (fake_study / "study.json").write_text("[" * 100_000)  # nested past the recursion limit
    refused(run_cli, fake_study, "report", fake_study, "--no-cams",
            says=(str(fake_study / "study.json"), "not"))


def test_a_budgets_record_cannot_send_reports_elsewhere(run_cli, tmp_path):
    out = tmp_path / "budgets"
    out.mkdir()
    (out / "study.json").write_text(json.dumps({
        "kind": "budgets", "config": {"base": "b0", "data": "digits", "epochs": [1, 2]},
        "budgets": [1, 2], "studies": {"1": "../victim", "2": "epochs-2"}}))
    (tmp_path / "victim").mkdir()
    refused(run_cli, tmp_path, "report", out, "--no-cams",
            says=("key 'studies.1': expected a plain file name",))


def test_a_hand_edited_search_record_is_one_line(run_cli, tmp_path):
    out = tmp_path / "search"
    out.mkdir()
    train = dict(TINY, seed=0)
    (out / "search.json").write_text(json.dumps({
        "kind": "search", "config": {"base": "b0", "data": "digits", "epochs": 1,
                                     "alphas": [1.2], "betas": [1.1]},
        "runs": {"a1.2-b1.1-s0": {"alpha": "1.2", "beta": 1.1, "gamma": 1.15, "seed": 0,
                                  "paper": False, "model": "b0@phi=1", "train": train}},
        "num_classes": 10}))
    refused(run_cli, tmp_path, "report", out, "--no-cams",
            says=(str(out / "search.json"), "key 'runs.a1.2-b1.1-s0.alpha': expected a finite"))


# -- model files --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    effscale.train(**TINY, out=str(out))
    return out / "last.safetensors"


def _hostile_copy(model_file, tmp_path, change, metadata=None):
    tensors = load_file(str(model_file))
    meta = json.loads(_raw_meta(model_file))
    change(meta)
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"effscale": metadata or json.dumps(meta)})
    return path


def _raw_meta(path):
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["effscale"]


MODEL_EDITS = [
    (lambda m: m.update(num_classes=10 ** 12), "key 'effscale.num_classes': expected an integer "
                                               "in [1, 100000], got 1000000000000"),
    (lambda m: m.update(num_classes="ten"), "key 'effscale.num_classes'"),
    (lambda m: m.update(num_classes=11, class_names=None),
     "describe a 11 x 720 classifier, but the file's is 10 x 720"),
    (lambda m: m.update(model="b0@w=100"), "classifier"),
    (lambda m: m.update(model="b0@phi=1e4"), "key 'effscale.model': 'b0@phi=1e4' scales the "
                                             "network out of range: phi must be in [-100, 100]"),
    (lambda m: m.update(stem_stride=3), "key 'effscale.stem_stride'"),
    (lambda m: m.update(bn="magic"), "key 'effscale.bn'"),
    (lambda m: m.pop("model"), "key 'effscale.model' is missing"),
]


@pytest.mark.parametrize("edit, says", MODEL_EDITS, ids=range(len(MODEL_EDITS)))
def test_hostile_model_metadata_is_refused_before_a_model_is_built(
        run_cli, tmp_path, monkeypatch, model_file, edit, says):
    path = _hostile_copy(model_file, tmp_path, edit)

    def no(*args, **kwargs):
        raise AssertionError("allocated before the metadata was checked")
    monkeypatch.setattr(checkpoint, "create_model", no)
    monkeypatch.setattr(checkpoint, "load_file", no)
    refused(run_cli, tmp_path, "evaluate", path, says=(str(path), says))


def test_model_metadata_that_is_not_json_is_one_line(run_cli, tmp_path, model_file):
    path = _hostile_copy(model_file, tmp_path, lambda m: None, metadata='{"model": "b0", ')
    refused(run_cli, tmp_path, "evaluate", path,
            says=(str(path), "metadata key 'effscale' is not valid JSON"))


def test_an_intact_model_file_still_loads(model_file):
    model, meta = checkpoint.load_model_file(model_file)
    assert meta["num_classes"] == model.num_classes == 10


# -- boxes files ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, says", [
    ('{"0": [' + "1" * 5000 + ", 0, 1, 1]}", "is not usable JSON"),
    ("[" * 100_000, "is not"),
    (json.dumps({"0": [10 ** 400, 0, 1, 1]}), "four numbers"),
])
def test_a_hostile_boxes_file_is_one_line(run_cli, tmp_path, text, says):
    path = tmp_path / "boxes.json"
    path.write_text(text)
    refused(run_cli, tmp_path, "cam", tmp_path / "no-run", "--boxes", path, "--out",
            tmp_path / "cams.png", says=(str(path), says))
