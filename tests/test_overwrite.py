"""`train` loses nothing: it writes into a new or empty directory, continues its own run with
--resume, and goes anywhere else only with --overwrite (one line says what it replaces).
Every refusal is one line, exit 2, and leaves every file byte-identical."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import effscale
from effscale.training import make_config
from effscale.training.rundir import check_out_dir, run_dir_contents

TINY = dict(model="b0@phi=-6,r=0.1652", data="digits", stem_stride=1, epochs=1, subset=32,
            val_subset=16, batch_size=16, ema_decay=0.0, quiet=True)


def _argv(out, **changes):
    argv = ["train", "--out", out]
    for key, value in dict(TINY, **changes).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def hashes(root: Path) -> dict:
    """Every file under `root` (hidden ones too) -> its SHA-256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run, trained into a directory that existed, empty."""
    out = tmp_path_factory.mktemp("finished") / "run"
    out.mkdir()
    summary = effscale.train(**TINY, out=str(out))
    assert summary["status"] == "finished"
    return out, summary


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run[0], out)
    return out


def test_an_empty_existing_directory_is_accepted(finished_run):
    out, summary = finished_run
    ours, others = run_dir_contents(out)
    assert others == [] and {"config.json", "state.pt", "summary.json"} <= set(ours)
    assert json.loads((out / "config.json").read_text())["overwrite"] is False


def test_a_finished_run_without_its_state_is_refused_untouched(run_copy, run_cli):
    (run_copy / "state.pt").unlink()
    before = hashes(run_copy)
    top1 = json.loads((run_copy / "summary.json").read_text())["final_top1"]
    code, _, err = run_cli(*_argv(run_copy))
    assert code == 2
    assert _one_line(err) == (f"effscale: error: {run_copy} already holds a finished run "
                              f"(summary.json: {top1:.2f}% top-1); pass --resume to continue "
                              f"it or --overwrite to replace it")
    assert hashes(run_copy) == before
    # --resume has nothing to resume from: refused too, rather than starting over on top
    code, _, err = run_cli(*_argv(run_copy, resume=True))
    assert code == 2 and "no state.pt to resume it from" in _one_line(err)
    assert hashes(run_copy) == before


def test_another_run_is_refused_untouched(run_copy, run_cli):
    before = hashes(run_copy)
    code, _, err = run_cli(*_argv(run_copy, seed=1))
    assert code == 2 and "already holds a finished run" in _one_line(err)
    (run_copy / "summary.json").unlink()  # killed before the end: still a run to resume
    before = hashes(run_copy)
    code, _, err = run_cli(*_argv(run_copy, seed=1))
    assert code == 2 and "already holds a run (" in _one_line(err) and "--resume" in err
    assert hashes(run_copy) == before


@pytest.mark.parametrize("files", [("notes.txt",), ("config.json",), ("metrics.csv",),
                                   ("config.json", "metrics.csv", "notes.txt"),
                                   ("data/",), (".hidden",)])
def test_files_effscale_did_not_write_are_refused_untouched(tmp_path, run_cli, files):
    out = tmp_path / "mine"
    out.mkdir()
    for name in files:
        if name.endswith("/"):
            (out / name).mkdir()
            (out / name / "x.bin").write_bytes(b"\x00\x01")
        else:
            (out / name).write_text(f"my own {name}\n")
    before = hashes(out)
    for resume in (False, True):
        code, _, err = run_cli(*_argv(out, resume=resume))
        assert code == 2, err
        line = _one_line(err)
        assert str(out) in line and "--overwrite" in line
        if not resume and set(files) - {"config.json", "metrics.csv"}:
            assert "holds files effscale did not write" in line
            assert all(name in line for name in files if name not in ("config.json", "metrics.csv"))
        assert hashes(out) == before


def test_overwrite_replaces_the_run_says_so_and_keeps_other_files(run_copy, run_cli):
    (run_copy / "notes.txt").write_text("keep me\n")
    (run_copy / "train.log").write_text("a shell redirect's log\n")
    board = run_copy / "tensorboard"
    board.mkdir(exist_ok=True)  # the run wrote its own when tensorboard is installed
    (board / "events.out.tfevents.1.host").write_bytes(b"old events")
    old_top1 = json.loads((run_copy / "summary.json").read_text())["final_top1"]
    before = hashes(run_copy)
    code, stdout, err = run_cli(*_argv(run_copy, seed=1, overwrite=True))
    assert code == 0, err
    said = [line for line in err.splitlines() if line.startswith("overwrite:")]
    assert said == [f"overwrite: replacing a finished run (summary.json: {old_top1:.2f}% top-1) "
                    f"in {run_copy} (best.safetensors, config.json, last.safetensors, "
                    f"metrics.csv and 3 more); notes.txt left alone"]
    after = hashes(run_copy)
    for name in ("notes.txt", "train.log"):
        assert after[name] == before[name]
    assert not (board / "events.out.tfevents.1.host").exists()  # the old run's events went
    config = json.loads((run_copy / "config.json").read_text())
    assert config["seed"] == 1 and config["overwrite"] is False  # a copy must not overwrite
    summary = json.loads(stdout)
    assert summary["status"] == "finished" and summary["seed"] == 1
    assert len((run_copy / "metrics.csv").read_text().strip().splitlines()) == 2


def test_resume_continues_its_own_run(run_copy, run_cli, finished_run):
    # finished: --resume returns the summary and changes nothing
    before = hashes(run_copy)
    code, stdout, err = run_cli(*_argv(run_copy, resume=True))
    assert code == 0, err
    assert json.loads(stdout)["final_top1"] == finished_run[1]["final_top1"]
    assert hashes(run_copy) == before
    # killed after its last checkpoint, before summary.json: --resume finishes it
    (run_copy / "summary.json").unlink()
    code, stdout, err = run_cli(*_argv(run_copy, resume=True))
    assert code == 0, err
    assert json.loads(stdout)["final_top1"] == finished_run[1]["final_top1"]
    assert json.loads((run_copy / "summary.json").read_text())["status"] == "finished"


def test_resume_and_overwrite_together_are_refused(run_copy, run_cli):
    before = hashes(run_copy)
    code, _, err = run_cli(*_argv(run_copy, resume=True, overwrite=True))
    assert code == 2 and "not both" in _one_line(err)
    assert hashes(run_copy) == before


def test_root_home_and_files_are_refused(tmp_path, run_cli, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    code, _, err = run_cli(*_argv(home))
    assert code == 2 and "(the home directory)" in _one_line(err) and "--overwrite" in err
    assert list(home.iterdir()) == []
    with pytest.raises(ValueError, match=r"into / \(the filesystem root\)"):
        check_out_dir(make_config(out="/"), print)  # checked only: never trains
    file = tmp_path / "a-file"
    file.write_text("x")
    code, _, err = run_cli(*_argv(file))
    assert code == 2 and "is a file, not a directory" in _one_line(err)
    assert file.read_text() == "x"


def test_what_counts_as_effscale_s(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "state.prev.pt", "state.unreadable.pt",
                 ".state.pt.123.0123456789ab.tmp", "w.log", ".nfs0001", ".notes.txt.1.ab.tmp",
                 "model.onnx"):
        (out / name).write_text("")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.h").write_text("")
    ours, others = run_dir_contents(out)
    assert ours == [".state.pt.123.0123456789ab.tmp", "config.json", "state.prev.pt",
                    "state.unreadable.pt", "tensorboard/"]
    assert others == [".notes.txt.1.ab.tmp", "model.onnx"]
    (out / "tensorboard" / "mine.txt").write_text("")
    assert "tensorboard/" in run_dir_contents(out)[1]
    logs = tmp_path / "logs-only"
    logs.mkdir()
    (logs / "train.log").write_text("")
    check_out_dir(make_config(out=str(logs)), print)  # a log alone is no obstacle
