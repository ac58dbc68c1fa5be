"""effscale report: tables, plots and the conclusion from a study directory (fake runs with
known numbers), self-contained HTML checked in headless Chromium."""

import csv
import html as html_lib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from effscale.reporting.pages import report
from effscale.experiments.study import study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def make_fake_study(root: Path, compound_gain: float, seeds: int = 3) -> Path:
    """A study directory whose runs 'finished' with chosen accuracies: compound scores
    `compound_gain` points above the single dimensions on every seed (plus seed noise)."""
    out = root / "study"
    plan = study(dry_run=True, out=str(out), seeds=seeds, levels="2.5",
                 echo=lambda *a: None, command="effscale study --seeds 3")["plan"]
    out.mkdir(parents=True)
    plan["measured"] = {m["model"]: {  # measured cost, bigger models slower
        "train_img_s": 1e9 / m["macs"], "infer_img_s": 3e9 / m["macs"],
        "latency_ms": m["macs"] / 1e6, "latency_p90_ms": m["macs"] / 9e5,
        "peak_mib": m["params"] / 1e5, "batch": 64, "device": "cpu", "precision": "fp32",
        "peak_method": "cpu: autograd saved tensors + params", "rounds": 2, "threads": 1,
        "hardware": "cpu (test)"} for m in plan["models"]}
    (out / "study.json").write_text(json.dumps(plan))
    base_acc = {"baseline": 80.0, "depth": 82.0, "width": 82.5, "resolution": 82.2,
                "compound": 82.0 + compound_gain}
    for key, run in plan["runs"].items():
        d = out / "runs" / key
        d.mkdir(parents=True)
        # seeds shift every model alike (pairing cancels it); compound gets a little extra
        # noise so the paired differences are not all identical
        final = base_acc[run["strategy"]] + 0.3 * run["seed"]
        if run["strategy"] == "compound":
            final += 0.1 * (run["seed"] % 2)
        with open(d / "metrics.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "train_loss", "val_loss", "top1", "top5"])
            for epoch in (1, 2, 3):
                w.writerow([epoch, 1.0 / epoch, 1.1 / epoch, final - 6 + 2 * epoch, 99.0])
        (d / "summary.json").write_text(json.dumps({
            "status": "finished", "final_top1": final, "best_top1": final, "best_epoch": 3,
            "wall_time_s": 12.5, "params": 1, "macs": 1}))
    return out


def test_report_tables_plots_conclusion(tmp_path):
    out = make_fake_study(tmp_path, compound_gain=+2.0)
    paths = report(out, cams=False, echo=lambda *a: None)
    md = Path(paths["md"]).read_text()
    html = Path(paths["html"]).read_text()
    assert "significantly better than every single-dimension strategy" in md
    assert "supports the paper's claim" in html
    assert "82.30 ± 0.30" in md  # depth: 82.0, 82.3, 82.6
    for name in ("accuracy_vs_macs", "accuracy_vs_params", "accuracy_vs_train_time",
                 "accuracy_vs_latency", "training_curves"):
        assert (out / "plots" / f"{name}.png").is_file() and (out / "plots" / f"{name}.svg").is_file()
        assert f"plots/{name}.png" in md
    assert "CAM figure skipped" in md
    assert "effscale study --seeds 3" in md and "torch" in md
    # self-contained: no external resources at all
    assert not re.search(r"""(src|href)=["'](https?:|//)""", html)
    assert "<link" not in html and "<script" not in html
    assert html.count("data:image/png;base64,") == 5
    assert "| latency (ms, cpu) |" in md and "measured on cpu" in md

    # the same runs with the sign of compound's gain flipped: the conclusion flips
    other = make_fake_study(tmp_path / "flipped", compound_gain=-2.0)
    flipped = Path(report(other, cams=False, echo=lambda *a: None)["md"]).read_text()
    assert "significantly worse than every single-dimension strategy" in flipped
    assert "contradicts" in flipped and "supports the paper" not in flipped


def test_report_without_checkpoints_says_why_there_are_no_cams(tmp_path):
    out = make_fake_study(tmp_path, compound_gain=0.5, seeds=2)
    md = Path(report(out, echo=lambda *a: None)["md"]).read_text()
    assert "CAM figure unavailable" in md


def test_report_refuses_a_directory_that_is_not_a_study(run_cli, tmp_path):
    code, out, err = run_cli("report", tmp_path)
    assert code == 2 and "not a study" in err and len(err.strip().splitlines()) == 1


# Once loaded: the page positions of the verdict, the first figure and the first table, and
# every table whose scroll box is wider than what it shows.
_LAYOUT_PROBE = (
    "<script>window.addEventListener('load', () => {"
    " const top = e => e ? Math.round(e.getBoundingClientRect().top + window.scrollY) : -1;"
    " const tables = [...document.querySelectorAll('table')];"
    " const h = [...document.querySelectorAll('h2')].find(x => x.textContent === 'Verdict');"
    " const f = document.querySelector('figure');"
    " document.body.setAttribute('data-layout', JSON.stringify({tables: tables.length,"
    " scrolling: tables.filter(t => t.parentElement.scrollWidth > t.parentElement.clientWidth)"
    ".map(t => t.rows[0].textContent), verdict: top(h), figure: top(f),"
    " first_table: top(tables[0]), figure_alt: f ? f.querySelector('img').alt : ''})); });"
    "</script>")


def _chromium(args, tmp_path):
    profile = tmp_path / "chrome-profile"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt install chromium); "
                                             "CI installs it")
def test_report_renders_in_headless_chromium(tmp_path):
    out = make_fake_study(tmp_path, compound_gain=+1.0)
    html_path = Path(report(out, cams=False, echo=lambda *a: None)["html"])
    # a copy with a probe that writes, once loaded, how many images decoded to real pixels
    probe = tmp_path / "probe.html"
    probe.write_text(html_path.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " document.body.setAttribute('data-images', imgs.length + ':' + imgs.filter("
        "i => i.complete && i.naturalWidth > 0).length); });</script></body>"))
    dom = _chromium(["--dump-dom", probe.as_uri()], tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    match = re.search(r'data-images="(\d+):(\d+)"', dom.stdout)
    assert match, dom.stdout[:500]
    total, loaded = int(match.group(1)), int(match.group(2))
    assert total == 5 and loaded == total
    assert dom.stdout.count("<table>") >= 5 and "Compound vs each other strategy" in dom.stdout

    # read top-down: the verdict, then accuracy against MACs, then the tables; at 1280 px no
    # table scrolls sideways (short model names, the cost columns in their own table)
    probe.write_text(html_path.read_text().replace("</body>", _LAYOUT_PROBE + "</body>"))
    dom = _chromium(["--dump-dom", "--window-size=1280,900", probe.as_uri()], tmp_path)
    layout = json.loads(html_lib.unescape(re.search(r'data-layout="([^"]*)"', dom.stdout)[1]))
    assert layout["tables"] >= 6 and layout["scrolling"] == [], layout
    assert 0 < layout["verdict"] < layout["figure"] < layout["first_table"], layout
    assert layout["figure_alt"].startswith("Top-1 against MACs"), layout

    # on a narrow window wide tables scroll inside their own box instead of being cut off or
    # widening the page
    probe.write_text(html_path.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => { const t = [...document.querySelectorAll('table')]"
        ".filter(x => x.offsetWidth > x.parentElement.clientWidth);"
        " const cut = t.filter(x => getComputedStyle(x.parentElement).overflowX !== 'auto'"
        " || x.parentElement.scrollWidth < x.offsetWidth);"
        " document.body.setAttribute('data-wide', t.length + ':' + cut.length + ':' +"
        " (document.documentElement.scrollWidth > window.innerWidth)); });</script></body>"))
    dom = _chromium(["--dump-dom", "--window-size=600,900", probe.as_uri()], tmp_path)
    wide, cut, page_overflows = re.search(r'data-wide="(\d+):(\d+):(\w+)"', dom.stdout).groups()
    assert int(wide) >= 1 and int(cut) == 0 and page_overflows == "false", (wide, cut)

    shot = out / "report_screenshot.png"
    result = _chromium([f"--screenshot={shot}", "--window-size=1200,2000", html_path.as_uri()],
                       tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    from PIL import Image
    import numpy as np
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1200)
    assert pixels.std() > 10  # not a blank page


def test_runs_csv_has_one_row_per_run(tmp_path):
    out = make_fake_study(tmp_path, compound_gain=+1.0)
    plan = json.loads((out / "study.json").read_text())
    unfinished = next(k for k, r in plan["runs"].items() if r["strategy"] == "depth")
    (out / "runs" / unfinished / "summary.json").unlink()  # interrupted: metrics, no summary
    report(out, cams=False, echo=lambda *a: None)
    rows = {r["key"]: r for r in csv.DictReader(open(out / "runs.csv"))}
    assert set(rows) == set(plan["runs"])
    for key, run in plan["runs"].items():
        row = rows[key]
        assert (row["strategy"], row["level"], int(row["seed"]), row["model"]) == (
            run["strategy"], run["level"], run["seed"], run["model"])
        assert (row["dataset"], row["effscale"]) == ("digits", plan["environment"]["effscale"])
        if key == unfinished:
            assert row["status"] == "partial" and row["final_top1"] == ""
        else:
            summary = json.loads((out / "runs" / key / "summary.json").read_text())
            assert row["status"] == "finished"
            assert float(row["final_top1"]) == summary["final_top1"]
