"""How a run's config comes together, in one place: defaults < recipe < file < flags (or
keywords), merged once (`make_config`); the batch and lr fitted to the data once
(`fit_to_data`); result-neutral fields marked on the fields; resume against the saved config."""

import json
import warnings
from dataclasses import fields

import pytest

import effscale
from effscale.training.config import (RUNTIME_FIELDS, Config, fit_to_data, make_config,
                                      run_config)
from effscale.training.recipes import DEFAULTS, RECIPES, fit_batch, get_recipe

TINY = dict(model="b0@phi=-10,res=16", data="digits", stem_stride=1, quiet=True)


def test_precedence_defaults_recipe_file_flags(tmp_path):
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"recipe": "seed", "momentum": 0.5, "epochs": 3}))
    cfg = make_config(str(file), epochs=7)
    assert cfg.recipe == "seed"
    assert cfg.epochs == 7                                  # flag over file
    assert cfg.momentum == 0.5                              # file over recipe
    assert cfg.optimizer == RECIPES["seed"]["optimizer"]    # recipe over defaults
    assert cfg.zero_init is DEFAULTS["zero_init"]           # a default the recipe leaves
    assert cfg.seed == Config.seed and cfg.model == Config.model  # Config's own defaults
    assert make_config(epochs=7).optimizer == RECIPES["fast"]["optimizer"]  # default recipe


def test_none_means_not_given_at_every_layer(tmp_path):
    """An explicit None (a JSON null, a keyword) leaves the layer below in place."""
    cfg = make_config({"momentum": None, "epochs": None}, ema_decay=None)
    fast = get_recipe("fast")
    assert (cfg.momentum, cfg.epochs, cfg.ema_decay) == (fast["momentum"], fast["epochs"],
                                                        fast["ema_decay"])


def test_every_recipe_sets_what_it_must_and_only_config_keys():
    names = {f.name for f in fields(Config)}
    for name, values in RECIPES.items():
        assert set(values) <= names and "lr" not in values, name
        cfg = make_config(recipe=name)
        unset = [k for k in values if k != "batch_size" and getattr(cfg, k) is None]
        assert unset == [], name
    # what a recipe may leave unsaid has a default; everything else every recipe says
    required = set(RECIPES["fast"]) - set(DEFAULTS)
    for name, values in RECIPES.items():
        assert required <= set(values), (name, required - set(values))


def test_the_data_is_fitted_once_and_only_where_unset():
    cfg = make_config(**TINY)
    assert cfg.batch_size is None and cfg.lr is None  # they need the data
    fitted = fit_to_data(cfg, train_size=1437)         # digits' training set
    fast = get_recipe("fast")
    assert fitted.batch_size == fit_batch(fast["batch_size"], 1437, fast["min_steps_per_epoch"])
    assert fitted.batch_size == 64 and fitted.lr == pytest.approx(0.4 * 64 / 256)
    assert fit_to_data(fitted, train_size=60000) == fitted  # fitted values are now given
    given = fit_to_data(make_config(**TINY, batch_size=32, lr=0.01), train_size=60000)
    assert (given.batch_size, given.lr) == (32, 0.01)
    tuned = fit_to_data(make_config(**TINY, pretrained="w.safetensors"), train_size=60000)
    assert tuned.lr == pytest.approx(0.4 * 128 / 256 * get_recipe("fast")["pretrained_lr_scale"])


def test_result_neutral_fields_are_marked_on_the_fields():
    marked = {f.name for f in fields(Config) if f.metadata["neutral"]}
    assert RUNTIME_FIELDS == marked
    assert {"out", "resume", "device", "workers", "quiet"} <= marked
    assert not marked & {"model", "data", "seed", "epochs", "lr", "batch_size", "recipe",
                         "val_fraction", "subset"}


def test_the_engine_trains_on_the_fitted_config(tmp_path):
    summary = effscale.train(**TINY, epochs=1, out=str(tmp_path / "run"))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert summary["status"] == "finished"
    assert saved == fit_to_data(make_config(**TINY, epochs=1, out=str(tmp_path / "run")),
                                train_size=1437).as_dict()


def test_resume_compares_with_the_saved_config_not_the_defaults(tmp_path):
    out = str(tmp_path / "run")
    effscale.train(**TINY, epochs=1, seed=3, momentum=0.9, out=out)
    # only what is given counts: the saved seed 3 and momentum 0.9 stay, although the
    # defaults are 0 and the recipe's 0.95
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = run_config({"out": out, "resume": True, "epochs": 1})
    assert (cfg.seed, cfg.momentum, cfg.batch_size) == (3, 0.9, 64)
    # a given value equal to the default but not to the saved run is a change, and says so
    with pytest.warns(UserWarning, match="changed seed"):
        cfg = run_config({"out": out, "resume": True, "seed": 0})
    assert cfg.seed == 0
    # a Config is a whole config: its seed 0 counts, though it equals the default (no guess
    # from the defaults of what was meant); its unset (None) recipe values do not
    with pytest.warns(UserWarning, match="changed seed"):
        cfg = run_config(Config(**TINY, epochs=1, seed=0, out=out, resume=True))
    assert (cfg.seed, cfg.momentum) == (0, 0.9)
