"""effscale study: config validation, the matched plan, the runner's resume logic, a whole
quick study on digits, and the computed conclusion."""

import json
from pathlib import Path

import pytest

from effscale.reporting import stats
from effscale.experiments.local import run_jobs
from effscale.experiments.runs import Job, run_status
from effscale.experiments.plan import (compound_base, mismatches, plan_models, plan_runs,
                                       resolve_config)
from effscale.model.names import parse_name


# -- config and plan (pure) -----------------------------------------------------------------

def test_default_plan_is_the_quick_study_and_every_model_matches():
    config = resolve_config({}, {})
    assert config.data == "digits" and config.seeds == 2 and len(config.levels) == 1
    models = plan_models(config, 10, 1)
    assert [m.strategy for m in models] == ["baseline", "depth", "width", "resolution",
                                            "compound"]
    for m in models:
        assert abs(m.ratio - 1) <= 0.02, (m.model, m.ratio)
    runs = plan_runs(models, config.seeds)
    assert len(runs) == 10 and runs[2].key == "depth-L2.5-s0"
    assert len({r.key for r in runs}) == len(runs)


@pytest.mark.parametrize("base,levels", [("b0", "2,4"), ("b0@phi=-4", "2,4"),
                                         ("b0@phi=-4,res=64", "3")])
def test_matched_macs_within_two_percent_where_rounding_allows(base, levels):
    config = resolve_config({}, dict(base=base, levels=levels, stem_stride=2, data="cifar10",
                                     max_mismatch=0.5))
    for m in plan_models(config, 10, 3):
        if m.strategy == "width" or (m.strategy == "compound" and m.resolution > 200):
            assert abs(m.ratio - 1) <= 0.02, (m.model, m.ratio)  # fine steps
        else:  # whole blocks / whole pixels: close, and the plan says how close
            assert abs(m.ratio - 1) <= 0.15, (m.model, m.ratio)


def test_compound_scales_resolution_even_when_the_base_fixes_pixels():
    base = parse_name("b0@phi=-4,res=64")
    cb = compound_base(base)
    assert cb.resolution == 64 and cb.res is None
    assert abs(cb.depth - base.depth) < 1e-4 and abs(cb.width - base.width) < 1e-4
    assert cb.with_(phi=2).resolution > 64
    # other coefficients re-express a phi base at phi=0 so phi scales from the base itself
    cb2 = compound_base(parse_name("b0@phi=-2"), (1.3, 1.05, 1.2))
    assert cb2.phi == 0 and cb2.alpha == 1.3 and abs(cb2.depth - 1.2 ** -2) < 1e-4
    assert str(compound_base(parse_name("b0"))) == "b0"


def test_mismatch_is_refused_with_how_far(run_cli, tmp_path):
    config = resolve_config({}, dict(levels="2"))
    far = mismatches(plan_models(config, 10, 1), 0.02)
    assert far and "x the target MACs" in far[0]
    code, out, err = run_cli("study", "--levels", "2", "--out", tmp_path / "s", "--dry-run", "--no-estimate")
    assert code == 2 and "not matched within 2%" in err and "+11.2%" in err
    assert len(err.strip().splitlines()) == 1


def test_flags_override_config_file_and_levels_replace_phis(tmp_path):
    config = resolve_config({"levels": [2, 4], "seeds": 3, "epochs": 7}, {"phis": "1"})
    assert config.phis == (1.0,) and config.levels == () and config.seeds == 3
    assert config.epochs == 7
    config = resolve_config({"phis": [1]}, {"levels": "3", "seeds": 4})
    assert config.levels == (3.0,) and config.phis == () and config.seeds == 4
    # a recipe other than the dataset default drops the lr tuned for that default
    assert resolve_config({}, {"recipe": "fast"}).lr is None


@pytest.mark.parametrize("argv,message", [
    (["--strategies", "depth,sideways"], "unknown strategy 'sideways'"),
    (["--levels", ""], "no FLOPs levels"),
    (["--seeds", "0"], "seeds must be"),
    (["--levels", "2,-1"], "levels must be > 0"),
    (["--coefficients", "1.2,1.1"], "three positive numbers"),
    (["--base", "b9"], "unknown base model"),
    (["--data", "mnist"], "unknown dataset"),
])
def test_bad_study_configs_get_one_clear_line(run_cli, tmp_path, argv, message):
    code, out, err = run_cli("study", *argv, "--out", tmp_path / "s", "--dry-run", "--no-estimate")
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_bad_config_file(run_cli, tmp_path):
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"strategies": ["compound"], "levels": [], "phis": []}))
    code, out, err = run_cli("study", "--config", path, "--dry-run", "--no-estimate")
    assert code == 2 and "no FLOPs levels" in err
    path.write_text(json.dumps({"levles": [2]}))
    code, out, err = run_cli("study", "--config", path, "--dry-run", "--no-estimate")
    assert code == 2 and "unknown study config key" in err and "levles" in err


def test_seed_preset_matches_flops_near_b2(run_cli, tmp_path):
    code, out, err = run_cli("study", "--preset", "seed", "--data", "fashion-mnist", "--dry-run", "--no-estimate",
                             "--out", tmp_path / "s")
    assert code == 0, err
    assert "35 epochs" in out and "b0@phi=" in out and "b0@d=" in out
    ratios = [float(x.split("x target")[0].split("(")[-1]) for x in out.splitlines()
              if "x target" in x]
    assert len(ratios) == 6 and all(abs(r - 1) <= 0.02 for r in ratios)  # with fast
    assert "fast L" in out


# -- the runner: skip finished, resume partial, train new -----------------------------------

def test_runner_skips_finished_and_resumes_partial(tmp_path, monkeypatch):
    calls = []

    def fake_train(config):
        calls.append((Path(config["out"]).name, config["resume"]))
        out = Path(config["out"])
        out.mkdir(parents=True, exist_ok=True)
        summary = {"status": "finished", "final_top1": 50.0}
        (out / "summary.json").write_text(json.dumps(summary))
        return summary

    from effscale.training import engine
    monkeypatch.setattr(engine, "train", fake_train)
    finished, partial = tmp_path / "a", tmp_path / "b"
    finished.mkdir()
    (finished / "summary.json").write_text(json.dumps({"status": "finished"}))
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"x")
    jobs = [Job(name, tmp_path / name, {"model": "b0"}) for name in ("a", "b", "c")]
    assert [run_status(j.out) for j in jobs] == ["finished", "partial", "new"]
    result = run_jobs(jobs, parallel=1, echo=lambda *a: None)
    assert result == {"a": "skipped", "b": "finished", "c": "finished"}
    assert calls == [("b", True), ("c", False)]
    calls.clear()
    assert set(run_jobs(jobs, echo=lambda *a: None).values()) == {"skipped"} and not calls


def test_runner_keeps_going_when_a_run_fails(tmp_path, monkeypatch):
    def fake_train(config):
        if config["model"] == "bad":
            raise RuntimeError("boom")
        Path(config["out"]).mkdir(parents=True)
        (Path(config["out"]) / "summary.json").write_text('{"status": "finished"}')
        return {"status": "finished"}

    from effscale.training import engine
    monkeypatch.setattr(engine, "train", fake_train)
    jobs = [Job("x", tmp_path / "x", {"model": "bad"}), Job("y", tmp_path / "y", {"model": "ok"})]
    result = run_jobs(jobs, echo=lambda *a: None)
    assert result["x"].startswith("failed: RuntimeError: boom") and result["y"] == "finished"


# -- a whole quick study on digits ----------------------------------------------------------


def test_quick_study_end_to_end_then_resume_trains_nothing(run_cli, tmp_path, one_thread):
    out = tmp_path / "study"
    argv = ["study", "--strategies", "baseline,width,compound", "--epochs", "1",
            "--subset", "300", "--val-subset", "150", "--seeds", "2", "--out", out,
            "--no-measure", "--jobs", "1"]  # --jobs last: the resume below changes it
    code, stdout, err = run_cli(*argv)
    assert code == 0, err + stdout
    plan = json.loads((out / "study.json").read_text())
    assert len(plan["runs"]) == 6 and plan["seeds"] == [0, 1]
    notes = [line for line in stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "too easy" in notes[0]  # what the quick study can and cannot show
    for m in plan["models"]:
        assert abs(m["ratio"] - 1) <= 0.02
    for key in plan["runs"]:
        run = out / "runs" / key
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        assert (run / "metrics.csv").is_file() and (run / "last.safetensors").is_file()
    for name in ("results.csv", "results.md", "report.html", "report.md"):
        assert (out / name).is_file(), name
    for stem in ("accuracy_vs_macs", "accuracy_vs_params", "training_curves"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{stem}.{ext}").stat().st_size > 1000
    csv_text = (out / "results.csv").read_text()
    assert csv_text.startswith("strategy,level,model,d,w,r,res,params,macs,target_macs,ratio,"
                               "top1_mean,top1_std,n,")
    assert len(csv_text.strip().splitlines()) == 1 + 3
    md = (out / "results.md").read_text()
    assert "Table 7" in md and "paired" in md and "± " in md and "p (paired t)" in md
    assert "## Conclusion" in md
    html = (out / "report.html").read_text()
    assert html.count("<table>") >= 4 and "data:image/png;base64," in html
    # the command as given, its flags in the config's order
    assert "effscale study --seeds 2 --epochs 1 " in html
    assert " --strategies baseline,width,compound" in html

    # the same command again: every run is finished, nothing trains
    def stamps():
        return {k: (out / "runs" / k / "summary.json").stat().st_mtime_ns for k in plan["runs"]}
    before = stamps()
    code, stdout, err = run_cli(*argv)
    assert code == 0, err
    assert "6 of 6 runs already finished: skipped" in stdout and "training " not in stdout
    assert stamps() == before

    # two interrupted runs (no summary yet) are resumed, in 2 worker processes; the others
    # are left alone
    for key in ("width-L2.5-s0", "compound-L2.5-s1"):
        (out / "runs" / key / "summary.json").unlink()
    code, stdout, err = run_cli(*argv[:-1], "2")
    assert code == 0, err + stdout
    assert "training 2 runs (2 to resume) with 2 workers" in stdout
    after = stamps()
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"width-L2.5-s0", "compound-L2.5-s1"}
    assert (out / "logs" / "width-L2.5-s0.log").is_file()

    # the same directory with another training setup is refused, not silently mixed
    code, stdout, err = run_cli(*argv[:3], "--epochs", "2", *argv[5:])
    assert code == 2 and "different study" in err


def test_conclusion_is_computed_and_flips_with_the_numbers():
    def comparisons(sign):
        top1 = {}
        for level in ("2", "4"):
            top1[("compound", level)] = {s: 80 + sign * 2 + 0.1 * s for s in range(3)}
            for other in ("depth", "width", "resolution"):
                top1[(other, level)] = {s: 80 - 0.05 * s for s in range(3)}
        return stats.compare_all(top1, ["2", "4"])

    better = comparisons(+1)
    worse = comparisons(-1)
    assert {c.verdict for c in better} == {"better"}
    assert {c.verdict for c in worse} == {"worse"}
    up, down = stats.conclusion(better), stats.conclusion(worse)
    assert "significantly better than every single-dimension" in up and "supports" in up
    assert "significantly worse than every" in down and "contradicts" in down
    assert up != down
    assert all(c.p < 0.05 and c.ci_low > 0 for c in better)


def test_paired_test_matches_scipy_and_handles_small_n():
    from scipy import stats as sps
    a, b = {0: 90.0, 1: 91.5, 2: 89.0}, {0: 89.0, 1: 91.0, 2: 88.9}
    c = stats.paired_comparison("2", "depth", a, b)
    assert c.n == 3 and abs(c.p - sps.ttest_rel([90, 91.5, 89], [89, 91, 88.9]).pvalue) < 1e-12
    assert c.ci_low < c.diff < c.ci_high
    one = stats.paired_comparison("2", "width", {0: 90.0}, {0: 80.0})
    assert one.verdict == "untested" and "cannot be tested" in one.meaning
    assert "one seed" in stats.conclusion([one]).lower()
    noisy = stats.paired_comparison("2", "width", {0: 90.0, 1: 80.0}, {0: 85.0, 1: 86.0})
    assert noisy.verdict == "no significant difference"
    assert "neither confirm nor refute" in stats.conclusion([noisy])
    assert stats.mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2)


@pytest.mark.parametrize("train, problem", [
    ({"flip": "no"}, "config key 'flip'"),
    ({"lr": "0.1"}, "config key 'lr'"),
    ({"lrr": 0.1}, "unknown config key"),
    ({"overwrite": True}, "set per run"),
])
def test_a_bad_train_section_is_refused_when_planned(run_cli, tmp_path, train, problem):
    """Refused by a dry run, before any run trains (and fails) on it."""
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"train": train}))
    code, out, err = run_cli("study", "--config", path, "--dry-run", "--no-estimate")
    assert code == 2 and problem in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
