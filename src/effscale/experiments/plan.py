"""A study's config, its matched plan and its record, before anything trains.

- config: presets <- dataset defaults <- config file <- flags, validated (`resolve_config`);
- plan: a pure function from the config to the models and runs (`plan_models`, `plan_runs`):
  every model's name, d/w/r, params and MACs are known before a tensor exists, so the FLOPs
  match is checked (and refused when > max_mismatch off) before anything trains
  (`matched_plan`);
- record: `prepare` turns a config into a `Planned` study (its study.json, its jobs), which
  `experiments.study` trains and `Planned.finish` summarises. A study at several budgets
  (`experiments.budgets`) prepares one per budget.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..data.sources import BUILTIN
from ..io.files import write_json
from ..io.records import (api_command, check_same_runs, command_history, environment,
                          level_label, load_study, parse_level)
from ..model.names import Variant, check_fast_alpha, parse_name
from ..model.profile import STRATEGIES, match_flops, profile
from ..model.spec import FAMILY
from .config_values import parse_coefficients, parse_epochs, parse_floats, parse_strategies
from .configs import StudyConfig
from .executors import check_experiment
from .given_data import check_same_datasets, datasets_facts
from .match_cost import (check_match, cost_search, mismatch_line, model_entry,
                         recorded_measurements, refusal, study_measurer, walk)
from .runs import Job, engine_config, failed_keys

# Per-dataset defaults: what `effscale study --data X` runs with no other flag.
# digits: the quick study (`make run`): 1 level, 2 seeds, all 5 strategies, a tiny base at
#   16 px with stem stride 1 whose level-2.5 variants all match within 2% (most tiny bases
#   and levels cannot: whole blocks and whole pixels are coarse steps at this size), trained
#   with the fast recipe's defaults for 10 epochs: every model >= 95% (BENCHMARKS.md).
# fashion-mnist: the converged CPU study (results/fashion-mnist): a 36 px base (28 px
#   upsampled, stem stride 2: 2x2 final map, 1.6M MACs) and one level, 4.3x, where every
#   strategy matches within 2% (the 32 px base has no level >= 4 that all strategies can
#   match: whole blocks and whole pixels jump past it). Trained to the plateau with the fast
#   recipe on a stratified 20,000-image subset for 12 epochs, 3 seeds: about 1.6 hours on 2
#   idle cores (15 runs); the full 60k at 15 epochs would take about 6.
# cifar10/100: B0 at 224 px like the paper and the CIFAR-10 study: a GPU job.
# The quick study leaves out fast compound scaling: at 16 px every channel count jumps by 8
# at once, and no level near 2.5 matches it within 2% (1.20x at 2.5).
CLASSIC = tuple(s for s in STRATEGIES if s != "fast")
DATA_DEFAULTS = {
    "digits": dict(base="b0@phi=-6,r=0.1652", stem_stride=1, levels=(2.5,), epochs=10,
                   recipe="fast", strategies=CLASSIC),
    "fashion-mnist": dict(base="b0@phi=-10,res=36", stem_stride=2, levels=(4.3,), epochs=12,
                          seeds=3, subset=20000, recipe="fast"),
    "cifar10": dict(base="b0", stem_stride=2, levels=(2.0, 4.0), epochs=15, recipe="fast"),
    "cifar100": dict(base="b0", stem_stride=2, levels=(2.0, 4.0), epochs=15, recipe="fast"),
}

# What a study on each dataset can show, printed after its results.
SCOPE = {"digits": "the quick study checks that every strategy's models build, match in MACs "
                   "and train (each ~98% top-1); digits is too easy and too small to rank the "
                   "strategies: run the Fashion-MNIST study for evidence"}


def _b2_level() -> float:
    # The CIFAR-10 study compared against B2 (compound). Its single-dimension models sat at
    # ~1.8x B2's FLOPs; we match all of them to B2's MACs instead.
    return round(profile("b2").macs / profile("b0").macs, 2)


PRESETS = {
    "quick": {},
    "seed": dict(base="b0", data="cifar10", stem_stride=2, recipe="seed", epochs=35,
                 levels=None, strategies=STRATEGIES),  # levels filled in by _b2_level()
}


CONFIG_KEYS = tuple(f.name for f in fields(StudyConfig))


def resolve_config(file_values: dict | None = None, flags: dict | None = None) -> StudyConfig:
    """Presets <- dataset defaults <- config file <- flags (later wins), validated.

    `flags` holds only what the user set (None means unset). Pure apart from the B2 MACs
    lookup of the seed preset.
    """
    file_values, flags = dict(file_values or {}), {k: v for k, v in (flags or {}).items()
                                                   if v is not None}
    unknown = sorted(set(file_values) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown study config key(s): {', '.join(unknown)}; known: "
                         f"{', '.join(CONFIG_KEYS)}")
    preset = flags.get("preset", file_values.get("preset"))
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    preset_values = dict(PRESETS.get(preset or "quick", {}))
    if preset == "seed":
        preset_values["levels"] = (_b2_level(),)
    data = flags.get("data", file_values.get("data", preset_values.get("data", "digits")))
    values: dict = {}
    # a deep copy: a nested default (a train dict) must not be shared with the frozen config
    defaults = copy.deepcopy(DATA_DEFAULTS.get(data, DATA_DEFAULTS["cifar10"]))
    recipe = flags.get("recipe", file_values.get("recipe", preset_values.get("recipe")))
    if recipe is not None and recipe != defaults.get("recipe"):
        for key in ("lr", "batch_size", "train"):  # tuned for the default recipe only
            defaults.pop(key, None)
    for layer in (defaults, preset_values, file_values, flags):
        # levels and phis are two spellings of one thing: a layer that gives one of them
        # replaces both (a --phis flag overrides a file's levels)
        if "levels" in layer or "phis" in layer:
            values["levels"], values["phis"] = (), ()
        values.update({k: v for k, v in layer.items() if v is not None})
    values["data"] = data
    values["levels"] = parse_floats(values.get("levels"), "levels")
    values["phis"] = parse_floats(values.get("phis"), "phis")
    values["strategies"] = parse_strategies(values.get("strategies", STRATEGIES))
    values["epochs"] = parse_epochs(values.get("epochs", StudyConfig.epochs))
    values["coefficients"] = parse_coefficients(values.get("coefficients"))
    config = StudyConfig(**{k: v for k, v in values.items() if k in CONFIG_KEYS})
    validate(config)
    return config


def validate(config: StudyConfig) -> None:
    check_experiment(config)
    if config.levels and config.phis:
        raise ValueError("give FLOPs levels (--levels 2,4) or phis (--phis 1,2), not both")
    needs_levels = any(s != "baseline" for s in config.strategies)
    if needs_levels and not (config.levels or config.phis):
        raise ValueError("no FLOPs levels: give --levels 2,4 (multiples of the base's MACs) "
                         "or --phis 1,2")
    for level in config.levels:
        if level <= 0:
            raise ValueError(f"levels must be > 0 (multiples of the base's MACs), got {level:g}")
    if not 0 < config.max_mismatch < 1:
        raise ValueError(f"max_mismatch must be in (0, 1), got {config.max_mismatch}")
    check_fast_alpha(config.fast_alpha)
    check_match(config)


# -- the plan (pure) ------------------------------------------------------------------------

@dataclass(frozen=True)
class PlannedModel:
    strategy: str
    level: str            # label: "1" (baseline), "2", "4" (x base MACs) or "phi1"
    model: str
    target_macs: int
    macs: int
    params: int
    resolution: int
    d: float              # depth, width, resolution multipliers relative to the base
    w: float
    r: float
    matched_on: str | None = None    # a measured cost (None: MACs, as the fields above)
    cost_ratio: float | None = None  # its measured cost / the compound model's

    @property
    def ratio(self) -> float:
        return self.macs / self.target_macs


@dataclass(frozen=True)
class PlannedRun:
    key: str              # run directory name under runs/
    seed: int
    model: PlannedModel


def dataset_shape(data: str, data_dir: str | None = None) -> tuple[int, int]:
    """(num_classes, in_chans) of a dataset, without loading it when it is built in."""
    if data in BUILTIN:
        return BUILTIN[data]
    from ..data import load_data  # imagefolder: the class list lives on disk
    info = load_data(data, data_dir=data_dir).info
    return info.num_classes, info.in_chans


def data_shape(config, datasets) -> tuple[int, int, dict]:
    """(num_classes, in_chans, facts) of an experiment's data: its Python datasets' (facts
    as `given_data.datasets_facts`), else the named dataset's (facts {})."""
    if datasets is not None:
        facts = datasets_facts(config, datasets)
        return facts["num_classes"], facts["in_chans"], facts
    return (*dataset_shape(config.data, config.data_dir), {})


def compound_base(base: Variant, coefficients=None) -> Variant:
    """The base that compound scaling adds phi to.

    A base given with res=... (pixels) or with phi under other coefficients is re-expressed as
    d/w/r multipliers at phi=0, so that phi scales *from the base itself* with the study's
    coefficients (a fixed res would otherwise stop gamma from scaling the resolution)."""
    a, b, g = coefficients or (base.alpha, base.beta, base.gamma)
    if base.res is None and (base.phi == 0 or (a, b, g) == (base.alpha, base.beta, base.gamma)):
        return base.with_(alpha=a, beta=b, gamma=g)
    family = FAMILY[base.base]
    return Variant(base.base, d=round(base.depth / family.depth, 6),
                   w=round(base.width / family.width, 6),
                   r=round(base.resolution / family.resolution, 6), alpha=a, beta=b, gamma=g)


def _planner(config: StudyConfig, num_classes: int, in_chans: int):
    """(profile of a name, maker of a PlannedModel from a name) for one study."""
    base = parse_name(config.base)

    def prof(name):
        return profile(name, num_classes=num_classes, stem_stride=config.stem_stride,
                       in_chans=in_chans)

    base_prof = prof(base)

    def planned(strategy, label, name, target, **cost):
        p = prof(name)
        v = parse_name(name)
        return PlannedModel(strategy, label, str(name), int(round(target)), p.macs, p.params,
                            p.resolution, round(v.depth / base.depth, 4),
                            round(v.width / base.width, 4),
                            round(p.resolution / base_prof.resolution, 4), **cost)
    return prof, planned


def _macs_models(config: StudyConfig, num_classes: int, in_chans: int) -> list[PlannedModel]:
    """Every (strategy, level) model with its MACs matched to the level's target. Pure."""
    base = parse_name(config.base)
    cbase = compound_base(base, config.coefficients)
    prof, planned = _planner(config, num_classes, in_chans)

    def matched(variant, dimension, target):
        fast = dict(fast_alpha=config.fast_alpha) if dimension == "fast" else {}
        return match_flops(variant, dimension, target, stem_stride=config.stem_stride,
                           num_classes=num_classes, in_chans=in_chans, **fast).name

    base_macs = prof(base).macs
    models = []
    if "baseline" in config.strategies:
        models.append(planned("baseline", "1", str(base), base_macs))
    levels = [(level_label(x), x * base_macs, None) for x in config.levels]
    for phi in config.phis:
        name = str(cbase.with_(phi=round(cbase.phi + phi, 4)))
        levels.append((level_label(phi, "phi"), prof(name).macs, name))
    for label, target, compound_name in levels:
        for strategy in STRATEGIES[1:]:
            if strategy not in config.strategies:
                continue
            if strategy == "compound":
                name = compound_name or matched(cbase, "compound", target)
            else:
                name = matched(base, strategy, target)
            models.append(planned(strategy, label, name, target))
    return models


def plan_models(config: StudyConfig, num_classes: int, in_chans: int,
                measured: dict | None = None) -> list[PlannedModel]:
    """Every (strategy, level) model matched to its level. Pure for a study matched on MACs;
    one matched on a measured cost (`config.match`) measures its candidates, unless
    `measured` holds the values its record used: then it takes the same steps with those and
    measures nothing (`recorded_measurements`)."""
    return plan_matched(config, num_classes, in_chans, measured, replay=measured is not None)[0]


def plan_matched(config: StudyConfig, num_classes: int, in_chans: int,
                 measured: dict | None = None, *, replay: bool = False, echo=print):
    """(models, the Measurer of a cost match or None): the MACs plan, then, for a study
    matched on a measured cost, each single-dimension and fast model re-sized to the compound
    model's measured cost at its level (experiments.match_cost)."""
    models = _macs_models(config, num_classes, in_chans)
    if config.match == "macs":
        return models, None
    measurer = study_measurer(config, num_classes, in_chans, known=measured, replay=replay,
                              echo=echo)
    targets = {m.level: m.model for m in models if m.strategy == "compound"}
    base = parse_name(config.base)
    walks = {(m.strategy, m.level): walk(base, m.strategy, m.model, targets[m.level],
                                         stem_stride=config.stem_stride,
                                         num_classes=num_classes, in_chans=in_chans,
                                         fast_alpha=config.fast_alpha)
             for m in models if m.strategy not in ("baseline", "compound")}
    found = cost_search(walks, measurer)
    planned = _planner(config, num_classes, in_chans)[1]
    out = []
    for m in models:
        hit = found.get((m.strategy, m.level))
        out.append(m if hit is None else planned(
            m.strategy, m.level, hit.name, m.target_macs, matched_on=config.match,
            cost_ratio=hit.ratio))
    return out, measurer


def replan_models(config: StudyConfig, record: dict) -> list[PlannedModel]:
    """A recorded study's models re-planned with the current code (its recorded measurements
    re-used): what `experiments.study.plan_differences` compares with the record."""
    return plan_models(config, record["num_classes"], record["in_chans"],
                       measured=recorded_measurements(record))


def plan_runs(models: list[PlannedModel], seeds: int) -> list[PlannedRun]:
    return [PlannedRun(f"{m.strategy}-L{m.level}-s{seed}", seed, m)
            for m in models for seed in range(seeds)]


def mismatches(models: list[PlannedModel], limit: float) -> list[str]:
    """One line per model whose MACs miss its level's target by more than `limit` (or, matched
    on a measured cost, whose cost misses the compound model's)."""
    out = []
    for m in models:
        if m.matched_on is not None:
            out += [mismatch_line(m, m.matched_on)] if abs(m.cost_ratio - 1) > limit else []
        elif abs(m.ratio - 1) > limit:
            why = "whole blocks" if m.strategy == "depth" else "channel/pixel rounding"
            out.append(f"{m.strategy} at level {m.level}: {m.model} has {m.ratio:.3f}x the "
                       f"target MACs ({(m.ratio - 1) * 100:+.1f}%; {why} allow no closer)")
    return out


def suggest_level(config: StudyConfig, level: float, num_classes: int, in_chans: int,
                  window: int = 25) -> float | None:
    """The level nearest `level` (0.01 steps, up to +-window%) at which every strategy matches
    within max_mismatch, or None. Resolution moves MACs in jumps (a whole pixel more can add a
    row to every stride-32 feature map: +10% at B0/352 px), so some levels have no match."""
    for k in range(1, window + 1):
        for candidate in (round(level * (1 + k / 100), 2), round(level * (1 - k / 100), 2)):
            trial = StudyConfig(**{**config.__dict__, "levels": (candidate,), "phis": (),
                                   "match": "macs"})
            if not mismatches(plan_models(trial, num_classes, in_chans), config.max_mismatch):
                return candidate
    return None


def train_config(config: StudyConfig, run: PlannedRun) -> dict:
    """The training-engine config of one run (without out/resume)."""
    return engine_config(config, run.model.model, run.seed)


def train_set_size(config: StudyConfig) -> int:
    """How many training images a run sees (the batch fitting reads it): kept in study.json
    so that re-planning needs no dataset files."""
    from ..data import load_data
    return len(load_data(config.data, data_dir=config.data_dir, download=False,
                         subset=config.subset, val_subset=config.val_subset,
                         val_fraction=config.train.get("val_fraction", 0.1)).train)


def matched_plan(config: StudyConfig, num_classes: int, in_chans: int, echo=print,
                 known: dict | None = None):
    """(config, models, Measurer of a cost match or None): the plan, with every model within
    max_mismatch of its level, or one ValueError that names a level that can be matched. The
    seed preset means "at about B2's MACs", so it moves to the nearest level that can be
    matched (and says so). `known`: measured costs to re-use (a cost match)."""
    models, measurer = plan_matched(config, num_classes, in_chans, known, echo=echo)
    far = mismatches(models, config.max_mismatch)
    if far and config.preset == "seed" and config.levels == (_b2_level(),):
        level = suggest_level(config, config.levels[0], num_classes, in_chans)
        if level is not None:
            echo(f"note: B2's MACs ({config.levels[0]:g}x B0) cannot be matched within "
                 f"{config.max_mismatch:.0%} ({far[0]}); using the nearest level that can: "
                 f"{level:g}x")
            config = StudyConfig(**{**config.__dict__, "levels": (level,)})
            models, measurer = plan_matched(config, num_classes, in_chans, known, echo=echo)
            far = mismatches(models, config.max_mismatch)
    cost_far = mismatches([m for m in models if m.matched_on], config.max_mismatch)
    if cost_far:
        raise ValueError(refusal(config.match, config.max_mismatch, cost_far))
    if far:
        hint = ""
        bad_levels = sorted(parse_level(m.level)[1] for m in models
                            if abs(m.ratio - 1) > config.max_mismatch and not m.matched_on
                            and parse_level(m.level)[0] == "level")
        if bad_levels:
            level = suggest_level(config, bad_levels[0], num_classes, in_chans)
            if level is not None:
                hint = f" (level {level:g} can be matched)"
        raise ValueError(f"FLOPs not matched within {config.max_mismatch:.0%}: {far[0]}"
                         + (f" (and {len(far) - 1} more)" if len(far) > 1 else "")
                         + f"; pick other levels{hint} or raise --max-mismatch")
    return config, models, measurer


def print_plan(out: Path, config: StudyConfig, models: list[PlannedModel], runs: int,
               echo) -> None:
    echo(f"study {out}: {len(models)} models x {config.seeds} seeds = {runs} runs on "
         f"{config.data}, {config.epochs} epochs each")
    for m in models:
        cost = f", {m.cost_ratio:.3f}x compound's {m.matched_on}" if m.matched_on else ""
        echo(f"  {m.strategy:>10} L{m.level:<6} {m.model:<34} {m.macs / 1e6:9.2f}M MACs "
             f"({m.ratio:.3f}x target{cost})  {m.params / 1e6:.2f}M params")
    if config.match != "macs":
        echo(f"matched on measured {config.match}: the compound model's at each level (measured "
             f"ratios vary by a few percent between runs)")
    if config.seeds < 2:
        echo("warning: 1 seed: no error bars and no significance test are possible")


@dataclass(frozen=True)
class Planned:
    """A study planned and recorded, before and after its runs train."""
    config: StudyConfig
    out: Path
    record: dict          # what study.json will hold
    old: dict             # the study.json found in `out`, or {}
    jobs: list[Job]
    datasets: object = None  # Python datasets the runs train on (config.data is their name)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._count_images()
        write_json(self.out / "study.json", self.record)

    def _count_images(self) -> None:
        if self.record.get("train_size") is None and self.datasets is None:
            try:
                self.record["train_size"] = train_set_size(self.config)
            except (OSError, ValueError, RuntimeError):  # not downloaded yet: the runs will
                self.record["train_size"] = None

    def finish(self, statuses: dict, *, report: bool, echo) -> dict:
        """After the runs (and `executors.record_time`): the record with the training-set
        size (counted now if the data was first downloaded by the runs), then tables, plots
        and the report."""
        record = self.record
        self._count_images()
        write_json(self.out / "study.json", record)
        failed = failed_keys(statuses)
        for key in failed:
            echo(f"warning: {key} {statuses[key]}")
        from ..reporting.results import write_results
        summary = write_results(self.out)
        if report:
            from ..reporting.pages import report as make_report
            make_report(self.out, echo=echo, results=summary, data=self.datasets)
        summary.update(out=str(self.out), failed=failed, wall_time_s=record["wall_time_s"])
        return summary


def prepare(config: StudyConfig, command: str | None, echo=print,
            datasets=None) -> Planned:
    """The matched plan, its runs and the study record (printed, not yet written).
    datasets: Python datasets the runs train on (config.data is their name)."""
    num_classes, in_chans, facts = data_shape(config, datasets)
    out = Path(config.out)
    old = load_study(out) if (out / "study.json").is_file() else {}
    check_same_datasets(old, facts, config.data)
    config, models, measurer = matched_plan(config, num_classes, in_chans, echo,
                                            recorded_measurements(old, config.match))
    runs = plan_runs(models, config.seeds)
    run_entries = {r.key: {"strategy": r.model.strategy, "level": r.model.level,
                           "seed": r.seed, "model": r.model.model,
                           "train": train_config(config, r)} for r in runs}
    check_same_runs(old, run_entries)
    known = {**(measurer.entries if measurer and config.measure else {}),
             **(old.get("measured") or {})}
    commands = command_history(old, command or api_command("study", config.as_dict()))
    record = {
        "kind": "study",
        "config": config.as_dict(),
        "num_classes": num_classes, "in_chans": in_chans,
        # counted when written (a dry run reads no data); Python datasets: counted now
        "train_size": facts["train_size"] if facts else old.get("train_size"),
        **({"val_size": facts["val_size"]} if facts else {}),
        "seeds": list(range(config.seeds)),
        "models": [model_entry(dict(asdict(m), ratio=round(m.ratio, 4))) for m in models],
        **({"matched": measurer.record()} if measurer else {}),
        "runs": run_entries,
        # measured cost (experiments.cost; a cost match's count): kept, never re-measured
        "measured": {m.model: known[m.model] for m in models if m.model in known},
        "commands": commands,
        "environment": environment(config.device),
        "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # the time of the runs already there, until `Planned.finish` adds this call's
        **({"wall_time_s": old["wall_time_s"]} if old.get("wall_time_s") is not None else {}),
    }
    print_plan(out, config, models, len(runs), echo)
    jobs = [Job(r.key, out / "runs" / r.key, run_entries[r.key]["train"]) for r in runs]
    return Planned(config, out, record, old, jobs, datasets)

