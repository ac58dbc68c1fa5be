"""The help and the README say what the code does: defaults in `effscale search --help`, the
README's study examples, the line a bare `effscale train` prints."""

import argparse
import json
import re
import shlex
from dataclasses import fields
from pathlib import Path

import pytest

from effscale.cli.main import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


def _option_helps(command: str) -> dict[str, str]:
    """--flag -> its help text, as `effscale COMMAND --help` prints it."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {flag: action.help or "" for action in sub.choices[command]._actions
            for flag in action.option_strings}


def _stated_default(helps: dict, flag: str) -> str:
    """The value after 'default' in FLAG's help (up to ';' or ')')."""
    stated = re.search(r"\(?default:? ([^;)]+)", helps[flag])
    assert stated, f"{flag}'s help states no default: {helps[flag]!r}"
    return stated.group(1).strip()


def test_search_help_states_the_real_defaults(capsys):
    from effscale.experiments.search import SearchConfig, resolve_config
    real = resolve_config({})  # what a bare `effscale search` runs
    assert real == SearchConfig()
    helps = _option_helps("search")

    def floats(stated):
        return tuple(float(v) for v in stated.split(","))

    assert floats(_stated_default(helps, "--alphas")) == real.alphas
    assert floats(_stated_default(helps, "--betas")) == real.betas
    assert float(_stated_default(helps, "--tolerance")) == real.tolerance
    assert int(_stated_default(helps, "--seeds")) == real.seeds
    assert int(_stated_default(helps, "--epochs")) == real.epochs
    assert _stated_default(helps, "--base").split(":")[0] == real.base
    assert _stated_default(helps, "--data") == real.data
    assert _stated_default(helps, "--recipe") == real.recipe
    assert int(_stated_default(helps, "--stem-stride")) == real.stem_stride
    assert _stated_default(helps, "--out") == real.out
    # and that is what --help prints
    text = _help(capsys, "search")
    for flag in ("--alphas", "--betas", "--seeds", "--epochs"):
        assert " ".join(helps[flag].split()) in text


def _study_examples() -> list[str]:
    """Each `effscale study ...` command of the README's "Scaling study" code block, with
    continuation lines joined and comments dropped."""
    section = README.read_text().split("## Scaling study", 1)[1]
    block = section.split("```", 2)[1]
    commands = block.replace("\\\n", " ").splitlines()
    return [line.split(" #", 1)[0].strip() for line in commands
            if line.strip().startswith("effscale study")]


def _runnable(command: str) -> bool:
    """Every example plans here with --dry-run (a plan reads no data and makes no CUDA call),
    but the placeholder `effscale study ... --dry-run`."""
    return shlex.split(command)[2:3] != ["..."]


def test_readme_has_study_examples_that_run_here():
    assert len([c for c in _study_examples() if _runnable(c)]) >= 5


@pytest.mark.parametrize("command", [c for c in _study_examples() if _runnable(c)])
def test_readme_study_example_plans(command, run_cli, tmp_path):
    # "..." at the end means "and your other flags": the flags shown must work without them
    argv = [a for a in shlex.split(command)[1:] if a != "..."]
    argv += ["--out", str(tmp_path / "study"), "--dry-run", "--no-estimate"]
    code, out, err = run_cli(*argv)
    assert code == 0, f"{command} --dry-run: {err.strip()}"
    assert "MACs" in out
    assert not (tmp_path / "study").exists()  # a dry run writes nothing


def test_bare_train_says_what_it_trains():
    from effscale.cli.train import default_model_line
    from effscale.model.names import parse_name
    from effscale.training.config import make_config
    cfg = make_config()
    line = default_model_line(None, {})
    assert line == (f"no --model: training {cfg.model} at {parse_name(cfg.model).resolution} px "
                    f"on {cfg.data} for {cfg.epochs} epochs (slow on a CPU: try --model "
                    f"b0@phi=-6,r=0.1652 --stem-stride 1)")
    assert "b0 at 224 px on digits for 15 epochs" in line
    assert default_model_line(None, {"model": "b1"}) is None


def test_bare_train_line_is_printed_first(run_cli, tmp_path, monkeypatch):
    from effscale.training import engine
    seen = {}

    def fake_train(config_file, **given):  # the line must come before any training
        seen["given"] = given
        return {"status": "ok"}
    monkeypatch.setattr(engine, "train", fake_train)
    code, out, err = run_cli("train", "--out", tmp_path / "run")
    assert code == 0 and "no --model: training b0 at 224 px" in err
    assert "model" not in seen["given"]
    code, out, err = run_cli("train", "--model", "b0@phi=-6,r=0.1652", "--out", tmp_path / "r2")
    assert code == 0 and "no --model" not in err


def test_study_and_search_flags_are_their_config_fields():
    """Every field of StudyConfig and SearchConfig is a flag (generated from the field, so its
    help cannot drift), except `train`, which only config files and Python set."""
    from effscale.experiments.configs import SearchConfig, StudyConfig, flag_keys
    from effscale.experiments.plan import PRESETS
    for command, cls in (("study", StudyConfig), ("search", SearchConfig)):
        helps = _option_helps(command)
        for f in fields(cls):
            if f.name == "train":
                assert f.name not in flag_keys(cls)
                continue
            name = f.name.replace("_", "-")
            flag = f"--no-{name}" if f.default is True else f"--{name}"
            shown = (",".join(map(str, f.default)) if isinstance(f.default, tuple)
                     else str(f.default))
            assert flag in helps and helps[flag] == f.metadata["help"].replace(
                "{default}", shown), (command, flag)
    parser_choices = next(a for a in _study_actions() if "--preset" in a.option_strings).choices
    assert tuple(parser_choices) == tuple(PRESETS)


def _study_actions():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["study"]._actions


def test_study_cli_passes_only_what_was_given(monkeypatch, run_cli, tmp_path):
    """Unset flags reach the study as absent (the dataset's defaults apply), switches as
    their values, and the recorded command reproduces what was typed."""
    from effscale.experiments import study as study_module
    seen = {}

    def fake(file_values, **kw):
        seen.update(kw)
        return {"conclusion": "", "failed": [], "out": str(tmp_path)}
    monkeypatch.setattr(study_module, "study", fake)
    code, _, err = run_cli("study", "--data", "fashion-mnist", "--no-measure", "--seeds", "2",
                           "--out", tmp_path / "s", "--dry-run", "--no-estimate")
    assert code == 0, err
    assert {k: v for k, v in seen.items() if k not in ("dry_run", "report", "command")} == {
        "data": "fashion-mnist", "seeds": 2, "out": str(tmp_path / "s"), "measure": False}
    assert seen["command"] == (f"effscale study --data fashion-mnist --seeds 2 --out "
                               f"{tmp_path / 's'} --no-measure")


def _own_data_example() -> str:
    """The README's Python example of training and a study on one's own Dataset."""
    section = README.read_text().split("**Your own data.**", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_own_data_example_trains_and_runs_a_study(tmp_path, monkeypatch, capsys):
    code = _own_data_example()
    assert "effscale.study(" in code and len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    record = json.loads((tmp_path / "studies" / "own" / "study.json").read_text())
    assert record["config"]["data"] == "python:FakeData" and len(record["runs"]) == 6
    assert all((tmp_path / "studies" / "own" / "runs" / k / "summary.json").is_file()
               for k in record["runs"])
    assert (tmp_path / "studies" / "own" / "report.html").is_file()
    # random images: the conclusion says the models learned nothing, not a verdict
    assert "No verdict: every model is at chance" in capsys.readouterr().out


def _readme_commands() -> list[list[str]]:
    """Every `effscale ...` command in the README's code blocks (continuations joined,
    comments and optional `[...]` parts dropped), but the `...` placeholders."""
    commands = []
    for block in README.read_text().split("```")[1::2]:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\[[^\]]*\]", "", line.split(" #", 1)[0]).strip()
            if line.startswith("effscale ") and " ... " not in f"{line} ":
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_readme_command_parses_and_its_settings_check(run_cli, tmp_path, monkeypatch):
    """No README command can name a flag or value that effscale no longer takes: each one
    parses, a train command's settings pass the config checks, searches plan (dry run; the
    studies in test_readme_study_example_plans), and profile commands run as written."""
    from effscale.training.config import make_config
    commands = _readme_commands()
    assert {c[0] for c in commands} >= {"profile", "train", "evaluate", "export", "study",
                                        "search", "report", "compare", "cam"}
    parser = build_parser()
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        args = parser.parse_args(argv)  # SystemExit (a failed test) on an unknown flag
        if argv[0] == "train":
            given = {k: v for k, v in vars(args).items()
                     if k not in ("command", "handler", "config_file", "wait")}
            make_config({k: v for k, v in given.items() if v is not None})
        elif argv[0] == "search":  # the study examples plan in test_readme_study_example_plans
            out = [] if "--out" in argv else ["--out", str(tmp_path / argv[0])]
            code, _, err = run_cli(*argv, *out, "--dry-run", "--no-estimate")
            assert code == 0, f"{' '.join(argv)} --dry-run: {err.strip()}"
        elif argv[0] == "profile":
            code, out, err = run_cli(*argv)
            assert code == 0 and out.strip(), f"{' '.join(argv)}: {err.strip()}"
