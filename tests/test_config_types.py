"""Every config value is checked against its field's type and range, whatever its source
(flags, a JSON/TOML file, Python keywords, a study's train section): a bad one is one line
naming the key, the value and the type wanted (CLI: exit 2), and nothing is coerced; valid
configs resolve exactly as before."""

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import effscale
from effscale.model.names import (KEYS, MAX_DEPTH, MAX_RESOLUTION, MAX_WIDTH, Variant,
                                  model_spec, parse_name)
from effscale.training import Config, fit_to_data, make_config
from effscale.training.config import FIELD_TYPES, RECIPES, check_paths, check_types
from effscale.training.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]

# (key, bad value, what the one line must say)
PROBES = [
    ("flip", "no", "config key 'flip': expected true or false, got 'no' (str)"),
    ("epochs", True, "config key 'epochs': expected an integer, got True (bool)"),
    ("lr", "0.1", "config key 'lr': expected a number, got '0.1' (str)"),
    ("batch_size", "64", "config key 'batch_size': expected an integer, got '64' (str)"),
    ("seed", "abc", "config key 'seed': expected an integer, got 'abc' (str)"),
    ("out", 7, "config key 'out': expected a string, got 7 (int)"),
    ("momentum", "0.9", "config key 'momentum': expected a number, got '0.9' (str)"),
]
TINY = dict(model="b0@phi=-6,r=0.1652", data="digits", stem_stride=1, epochs=1, subset=64,
            val_subset=32, quiet=True)


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize("key, value, message", PROBES, ids=[p[0] for p in PROBES])
def test_a_bad_value_in_a_config_file_is_one_line_exit_2(run_cli, tmp_path, key, value,
                                                         message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(TINY, **{key: value})))
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "--config", path, "--out", out)
    assert code == 2
    assert _one_line(err) == f"effscale: error: {message}"
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("key, value, message", PROBES, ids=[p[0] for p in PROBES])
def test_a_bad_keyword_is_refused_before_anything_runs(tmp_path, key, value, message):
    with pytest.raises(ValueError) as raised:
        effscale.train(**{**TINY, "out": str(tmp_path / "run"), key: value})
    assert str(raised.value) == message
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError) as raised:
        make_config({key: value})  # a study's train section and a dict come this way
    assert str(raised.value) == message


def test_a_toml_file_is_checked_the_same_way(run_cli, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = 1\nflip = "no"\n')
    code, _, err = run_cli("train", "--config", path, "--out", tmp_path / "run")
    assert code == 2 and "config key 'flip': expected true or false, got 'no'" in _one_line(err)


@pytest.mark.parametrize("values, message", [
    ({"epochs": 2.0}, "expected an integer (a whole number"),
    ({"epochs": 10 ** 30}, "out of range"),
    ({"lr": float("nan")}, "expected a finite number, got nan"),
    ({"lr": float("inf")}, "expected a finite number, got inf"),
    ({"warmup_epochs": 10 ** 400}, "expected a finite number"),
    ({"memory_budget": True}, "expected a string or a number, got True (bool)"),
    ({"model": ["b0"]}, "expected a string, got ['b0'] (list)"),
    ({"data_dir": {}}, "expected a string, got {} (dict)"),
    ({"compile": None}, "expected true or false, got None"),
    ({"resume": 1}, "expected true or false, got 1 (int)"),
    ({"overwrite": "yes"}, "expected true or false, got 'yes'"),
    ({"batchsize": 3}, "unknown config key(s): 'batchsize' (did you mean 'batch_size'?)"),
])
def test_wrong_types_name_key_value_and_type(values, message):
    with pytest.raises(ValueError) as raised:
        make_config(values)
    assert message in _one_line(str(raised.value))


@pytest.mark.parametrize("values, message", [
    ({"momentum": 1}, "momentum must be in [0, 1), got 1"),
    ({"ema_decay": -0.1}, "ema_decay must be in [0, 1), got -0.1"),
    ({"warmup_fraction": 1.5}, "warmup_fraction must be in [0, 1], got 1.5"),
    ({"drop_path_rate": 1.0}, "drop_path_rate must be in [0, 1), got 1.0"),
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"lr": -1}, "lr must be >= 0, got -1"),
    ({"seed": -1}, "seed must be >= 0, got -1"),
    ({"checkpoint_minutes": 0}, "checkpoint_minutes must be > 0, got 0"),
    ({"cutout": -2}, "cutout must be >= 0, got -2"),
    ({"autoaugment": "magic"}, "unknown autoaugment 'magic'; choose one of none, "),
    ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
    ({"out": ""}, "out must not be empty"),
    ({"memory_budget": "1e999GB"}, "memory_budget '1e999GB' is not a size"),
    ({"model": "b0@phi=1e6"}, "scales the network out of range"),
    ({"lr_per_256": 1e300, "batch_size": 2 ** 62}, "lr must be a finite number, got inf"),
])
def test_values_out_of_range_are_refused_when_resolved(values, message):
    with pytest.raises(ValueError) as raised:
        fit_to_data(make_config(values), train_size=1000)
    assert message in _one_line(str(raised.value))


def test_numbers_are_numbers_and_nothing_is_coerced():
    cfg = make_config({"lr": 1, "momentum": 0, "flip": False, "memory_budget": 8e9,
                       "crop_padding": None})
    assert cfg.lr == 1 and cfg.momentum == 0 and cfg.flip is False
    assert cfg.memory_budget == 8e9 and cfg.crop_padding is None
    # NumPy scalars (a sweep over np.arange) become plain Python numbers
    cfg = make_config(epochs=np.int64(3), lr=np.float32(0.5), flip=np.bool_(True), seed=np.int32(2))
    assert (type(cfg.epochs), type(cfg.lr), type(cfg.flip), type(cfg.seed)) == (int, float, bool, int)
    assert (cfg.epochs, cfg.lr, cfg.flip, cfg.seed) == (3, 0.5, True, 2)
    # flags arrive typed from argparse; a bad one is argparse's one line
    for field in fields(Config):
        assert FIELD_TYPES[field.name][0] in ("str", "int", "float", "bool"), field


def test_a_bad_flag_is_one_line_exit_2(run_cli, tmp_path):
    code, _, err = run_cli("train", "--lr", "fast", "--out", tmp_path / "run")
    assert code == 2 and "--lr" in _one_line(err)


# -- valid configs resolve as before -------------------------------------------------------------

COMMITTED = sorted({*ROOT.glob("results/*/runs/*/config.json"),
                    *ROOT.glob("results/fashion-mnist-gpu/epochs-*/runs/*/config.json")})


def test_there_are_committed_run_configs():
    assert len(COMMITTED) >= 30


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT / "results")))
def test_committed_run_configs_pass_and_resolve_unchanged(path):
    saved = json.loads(path.read_text())
    assert check_types(saved) == saved
    resolved = make_config(saved).as_dict()  # paths unchecked: any machine
    assert resolved.pop("overwrite") is False  # newer than these runs; a runtime key
    assert resolved.pop("val_fraction") == 0.1  # newer too; their data had val splits
    assert resolved == saved
    assert {k: type(v) for k, v in resolved.items()} == {k: type(v) for k, v in saved.items()}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("train_size", [None, 100, 1437, 60000])
def test_every_recipe_resolves_to_its_own_values(recipe, train_size):
    cfg = make_config(recipe=recipe)
    if train_size is not None:
        cfg = fit_to_data(cfg, train_size)
    for key, value in get_recipe(recipe).items():
        if key != "batch_size":
            assert getattr(cfg, key) == value and type(getattr(cfg, key)) is type(value), key
    if train_size is not None:
        assert fit_to_data(cfg, train_size) == cfg  # fitting twice is harmless


# -- property: any JSON for any key is a Config or one line --------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6)
# numeric extremes too: alpha ** 1e4 overflowed, a depth of 1e300 never finished counting
EXTREMES = st.sampled_from(["1e4", "1e308", "-1e308", "1e400", "nan", "inf", "-inf", "1e-300",
                            "-1e-300", "100", "100.0001", "8192", "8193", "1e6", "0", "-0"])
NAME_VALUES = (st.floats().map(repr) | st.integers(-10 ** 6, 10 ** 6).map(str)
               | st.integers(-10 ** 400, 10 ** 400).map(str) | EXTREMES
               | st.floats(-1e6, 1e6).map(lambda v: f"{v:e}") | st.text(max_size=5))
MODEL_NAMES = st.text(max_size=30) | st.builds(
    lambda base, items: base + ("@" + ",".join(items) if items else ""),
    st.sampled_from(["b0", "b3", "l2", "B1", "efficientnet-b2", "b9", ""]),
    st.lists(st.builds(lambda k, eq, v: f"{k}{eq}{v}", st.sampled_from(KEYS + ("zz", "")),
                       st.sampled_from(["=", "", "=="]), NAME_VALUES), max_size=4))


def _plausible(name: str):
    """Values of the right type (often in range), so that valid configs come out too."""
    kinds = FIELD_TYPES[name]
    if name == "model":
        return MODEL_NAMES
    if name in ("pretrained", "data_dir"):
        return st.none()  # an existing path is the file system's business, not the type's
    choices = next(f.metadata["choices"] for f in fields(Config) if f.name == name)
    options = [st.none()] if "None" in kinds else []
    if choices:
        options.append(st.sampled_from([*choices, "nonsense"]))
    if "bool" in kinds:
        options.append(st.booleans())
    if "int" in kinds:
        options.append(st.integers(-3, 400))
    if "float" in kinds:
        options.append(st.floats(-0.5, 3) | st.integers(0, 5))
    if "str" in kinds and not choices:
        options.append(st.text(max_size=10))
    return st.one_of(options)


ITEMS = st.sampled_from(sorted(FIELD_TYPES)).flatmap(
    lambda key: st.tuples(st.just(key), JSON | _plausible(key)))
CONFIGS = st.lists(ITEMS, max_size=6).map(dict)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=CONFIGS, train_size=st.none() | st.integers(1, 10 ** 7))
def test_any_json_values_give_a_config_or_one_line(values, train_size):
    paths = {k: values[k] for k in ("pretrained", "data_dir")
             if isinstance(values.get(k), str) and values[k]}
    try:
        cfg = make_config(values)
        check_paths(cfg)
        if train_size is not None:
            cfg = fit_to_data(cfg, train_size)
    except ValueError as exc:
        assert len(str(exc).splitlines()) == 1 and str(exc).strip(), repr(str(exc))
    except FileNotFoundError as exc:  # only for a path that is not there
        assert paths and "no such" in str(exc) and len(str(exc).splitlines()) == 1
    else:
        assert isinstance(cfg, Config)
        assert check_types(cfg.as_dict()) == cfg.as_dict()
        assert make_config(cfg) == cfg  # merging a merged config changes nothing
        if train_size is not None:
            assert fit_to_data(cfg, train_size) == cfg


# well-formed names whose numbers are extreme: every key, one or two at a time
EXTREME_NAMES = st.builds(
    lambda base, items: base + "@" + ",".join(f"{k}={v}" for k, v in items),
    st.sampled_from(["b0", "l2"]),
    st.lists(st.tuples(st.sampled_from(KEYS), EXTREMES | NAME_VALUES), min_size=1, max_size=2,
             unique_by=lambda kv: kv[0]))


@settings(max_examples=300, deadline=None)
@given(name=MODEL_NAMES | EXTREME_NAMES | st.text())
@example("b0@phi=1e4").via("effscale profile: OverflowError")
@example("b0@phi=1e308").via("effscale profile: OverflowError")
@example("b0@w=1e300").via("effscale profile: OverflowError")
@example("b0@phi=100,alpha=10").via("depth 1e100")
def test_any_model_name_parses_or_is_one_line(name):
    """parse_name and then model_spec and profile (what `effscale profile NAME` does): a spec
    or one line, never OverflowError or a count that never ends."""
    try:
        variant = parse_name(name)
        assert isinstance(variant, Variant)
        spec = model_spec(variant)
        assert effscale.profile(spec).macs > 0
    except ValueError as exc:
        assert len(str(exc).splitlines()) == 1 and str(exc).strip(), repr(str(exc))
    else:
        assert spec.width <= MAX_WIDTH and spec.depth <= MAX_DEPTH
        assert spec.resolution <= MAX_RESOLUTION
