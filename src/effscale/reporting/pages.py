"""`effscale report DIR`: report.html (self-contained) and report.md of any experiment
directory: a study (`results.study_sections`), a study at several budgets
(`budgets.budget_report`) or a coefficient search (`search.search_sections`)."""

from __future__ import annotations

from pathlib import Path

from ..io.files import write_text
from ..io.records import load_study
from .budgets import budget_report
from .render import to_html, to_markdown
from .results import study_sections
from .search import search_sections


def report(study_dir: str | Path, *, cams: bool = True, images: int = 6, echo=print,
           results: dict | None = None, data=None) -> dict:
    """Write report.html and report.md in a study (or search) directory; return their paths.
    `results`: what write_results / write_search_results just returned, so that the tables
    and plots are not computed and drawn a second time. `data`: the Python datasets a study
    trained on, for its CAM figure (else the study's dataset, by name)."""
    study_dir = Path(study_dir)
    if (study_dir / "search.json").is_file():
        title, sections = search_sections(study_dir, results)
    elif (study_dir / "study.json").is_file() and load_study(study_dir).get("kind") == "budgets":
        return budget_report(study_dir, results, echo=echo)
    elif (study_dir / "study.json").is_file():
        title, sections = study_sections(study_dir, cams=cams, images=images, echo=echo,
                                          results=results, data=data)
    else:
        raise FileNotFoundError(f"{study_dir} holds no study.json or search.json: not a study "
                                f"or search directory")
    paths = {"html": study_dir / "report.html", "md": study_dir / "report.md"}
    write_text(paths["md"], to_markdown(title, sections, study_dir))
    write_text(paths["html"], to_html(title, sections, study_dir))
    echo(f"report: {paths['html']} and {paths['md']}")
    return {k: str(v) for k, v in paths.items()}
