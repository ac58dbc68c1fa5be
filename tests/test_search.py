"""effscale search: the (alpha, beta) grid with gamma derived, a tiny real search on digits,
and its best coefficients fed back to effscale study and to model names."""

import csv
import json
import math

import pytest
import torch

from effscale.experiments.search import candidates, gamma_for, parse_grid
from effscale.reporting.search import ranked_rows, recommend
from effscale.model.names import parse_name


def test_grid_derives_gamma_and_skips_gamma_below_one():
    grid = candidates((1.0, 1.2, 1.4), (1.0, 1.1, 1.2))
    assert len(grid) == 9
    for c in grid:
        if c["skip"] is None:
            assert c["alpha"] >= 1 and c["beta"] >= 1 and c["gamma"] >= 1
            assert abs(c["alpha"] * c["beta"] ** 2 * c["gamma"] ** 2 / 2 - 1) <= 0.02
    skipped = {(c["alpha"], c["beta"]): c["skip"] for c in grid if c["skip"]}
    assert "gamma" in skipped[(1.4, 1.2)]  # 1.4 * 1.44 > 2: gamma would be < 1
    assert gamma_for(1.2, 1.1) == round(math.sqrt(2 / (1.2 * 1.21)), 3)
    assert parse_grid("1.0:1.2:0.1", "alphas") == (1.0, 1.1, 1.2)
    assert parse_grid("1.05,1.15", "betas") == (1.05, 1.15)
    with pytest.raises(ValueError, match="START:STOP:STEP"):
        parse_grid("1.2:1.0:0.1", "alphas")


def test_ranking_puts_unfinished_last_and_ranks_the_paper_point():
    record = {"seeds": [0, 1], "base_macs": 100,
              "points": [dict(alpha=a, beta=1.1, gamma=1.2, product=2.0, paper=p, model="m",
                              params=1, macs=200) for a, p in ((1.1, False), (1.2, True),
                                                               (1.3, False))]}
    top1 = {"a1.1-b1.1-s0": 80, "a1.1-b1.1-s1": 82, "paper-s0": 85, "paper-s1": 86}
    rows = ranked_rows(record, top1)
    assert [r["alpha"] for r in rows] == [1.2, 1.1, 1.3]
    assert rows[0]["paper"] and rows[0]["rank"] == 1 and rows[2]["rank"] is None
    assert rows[1]["top1_mean"] == 81 and rows[1]["n"] == 2


def _rows(scores: dict) -> list[dict]:
    """Ranked rows from {(alpha, beta): [top-1 per seed]}; (1.2, 1.1) is the paper's point."""
    seeds = max(len(v) for v in scores.values())
    record = {"seeds": list(range(seeds)), "base_macs": 100,
              "points": [dict(alpha=a, beta=b, gamma=1.1, product=2.0, paper=(a, b) == (1.2, 1.1),
                              model="m", params=1, macs=200) for a, b in scores]}
    top1 = {}
    for (a, b), values in scores.items():
        for seed, value in enumerate(values):
            key = f"paper-s{seed}" if (a, b) == (1.2, 1.1) else f"a{a:g}-b{b:g}-s{seed}"
            top1[key] = value
    return ranked_rows(record, top1)


def test_search_recommends_only_a_separated_winner():
    # the case: every candidate at chance (10.22% on 10 classes), one seed
    best, why = recommend(_rows({(1.1, 1.0): [10.22], (1.1, 1.1): [10.22], (1.2, 1.1): [10.22]}),
                          10)
    assert best is None and "at chance" in why
    best, why = recommend(_rows({(1.1, 1.0): [80.0, 81.0], (1.3, 1.0): [80.0, 81.0]}), 10)
    assert best is None and "tied" in why
    best, why = recommend(_rows({(1.1, 1.0): [85.0], (1.3, 1.0): [80.0]}), 10)
    assert best is None and "one seed" in why
    # within each other's seed spread
    best, why = recommend(_rows({(1.1, 1.0): [85.0, 80.0, 83.0], (1.3, 1.0): [82.0, 81.0, 84.0]}),
                          10)
    assert best is None and "not separated" in why
    # clearly separated: recommended, and the paper's point competes like any other
    best, why = recommend(_rows({(1.1, 1.0): [90.0, 90.5, 90.2], (1.3, 1.0): [85.0, 85.4, 85.1],
                                 (1.2, 1.1): [86.0, 86.2, 85.9]}), 10)
    assert (best["alpha"], best["beta"]) == (1.1, 1.0) and "separated" in why
    best, _ = recommend(_rows({(1.1, 1.0): [80.0, 80.5], (1.2, 1.1): [90.0, 90.4]}), 10)
    assert best["paper"]


def test_bad_search_configs(run_cli, tmp_path):
    code, out, err = run_cli("search", "--alphas", "1.5", "--betas", "1.3", "--out", tmp_path)
    assert code == 2 and "no grid point" in err
    code, out, err = run_cli("search", "--seeds", "0", "--out", tmp_path)
    assert code == 2 and "seeds must be" in err
    assert len(err.strip().splitlines()) == 1


def test_tiny_search_end_to_end(run_cli, tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_study: one thread per process on a busy machine
    try:
        out = tmp_path / "search"
        code, stdout, err = run_cli("search", "--alphas", "1.1,1.2", "--betas", "1.1",
                                    "--seeds", "1", "--epochs", "1", "--subset", "200",
                                    "--val-subset", "100", "--jobs", "1", "--out", out)
    finally:
        torch.set_num_threads(before)
    assert code == 0, err + stdout
    record = json.loads((out / "search.json").read_text())
    assert len(record["points"]) == 3 and sum(p["paper"] for p in record["points"]) == 1
    for p in record["points"]:
        v = parse_name(p["model"])
        assert v.alpha == p["alpha"] and v.beta == p["beta"] and v.gamma == p["gamma"]
    for name in ("search_results.csv", "search_results.md",
                 "plots/heatmap.png", "plots/heatmap.svg", "report.html", "report.md"):
        assert (out / name).is_file(), name
    rows = (out / "search_results.csv").read_text().strip().splitlines()
    assert rows[0].startswith("rank,alpha,beta,gamma") and len(rows) == 4
    md = (out / "search_results.md").read_text()
    # one seed and one epoch: the search says why it recommends nothing, and writes no best
    assert "No recommendation:" in md and "no recommendation:" in stdout
    assert "--coefficients" not in stdout and not (out / "best_coefficients.json").exists()
    # effscale compare reads a search as it reads a study: one row per candidate
    code, table, err = run_cli("compare", out)
    assert code == 0, err
    ranked = {r["model"]: r["top1_mean"] for r in csv.DictReader(rows)}
    for model, top1 in ranked.items():
        line = next(x for x in table.splitlines() if f"| {model} |" in x)
        assert f"| {float(top1):.2f}" in line and ("paper point" in line) == (
            model == next(p["model"] for p in record["points"] if p["paper"]))
    best = next(p for p in record["points"] if p["alpha"] == 1.1)
    best["coefficients"] = f"{best['alpha']:g},{best['beta']:g},{best['gamma']:g}"

    # a candidate's coefficients feed straight back into a study and into a model name
    code, plan_out, err = run_cli("study", "--coefficients", best["coefficients"], "--dry-run", "--no-estimate",
                                  "--out", tmp_path / "study", "--max-mismatch", "0.2")
    assert code == 0, err
    compound = [line for line in plan_out.splitlines() if "compound" in line][0]
    planned = parse_name(compound.split()[2])  # a name leaves out the default alpha, 1.2
    assert (planned.alpha, planned.gamma) == (best["alpha"], best["gamma"])
    assert parse_name(f"b0@phi=2,alpha={best['alpha']},beta={best['beta']},"
                      f"gamma={best['gamma']}").alpha == best["alpha"]

    # re-running the same search trains nothing, and its record keeps the time and machine
    # that trained the runs (the lifecycle a study has: executors.train_recorded)
    before = json.loads((out / "search.json").read_text())
    code, stdout, err = run_cli("search", "--alphas", "1.1,1.2", "--betas", "1.1", "--seeds", "1",
                                "--epochs", "1", "--subset", "200", "--val-subset", "100",
                                "--jobs", "1", "--out", out)
    assert code == 0 and "3 of 3 runs already finished: skipped" in stdout
    after = json.loads((out / "search.json").read_text())
    assert after["wall_time_s"] == before["wall_time_s"] > 0
    assert after["environment"] == before["environment"]


def test_search_dry_run_lists_the_candidates_and_writes_nothing(run_cli, tmp_path):
    out = tmp_path / "search"
    code, stdout, err = run_cli("search", "--alphas", "1.1,1.2", "--betas", "1.1", "--seeds",
                                "2", "--epochs", "1", "--out", out, "--dry-run", "--no-estimate")
    assert code == 0, err
    assert "3 candidates x 2 seeds" in stdout and not out.exists()
    lines = [line for line in stdout.splitlines() if "MACs (" in line]
    assert len(lines) == 3 and sum("paper" in line for line in lines) == 1
    for alpha, beta in ((1.1, 1.1), (1.2, 1.1)):
        gamma = gamma_for(alpha, beta)
        line = next(x for x in lines if f"alpha={alpha:g} beta={beta:g}" in x)
        assert f"gamma={gamma:g}" in line
        model = line.split()[5]
        assert parse_name(model).alpha == alpha and parse_name(model).gamma == gamma
