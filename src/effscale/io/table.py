"""Rows of dicts printed as an aligned text table, Markdown, CSV or JSON."""

from __future__ import annotations

import csv
import html
import io
import json
import re

# cells that read as numbers (12.3, 1.5e9, 0.98x, 91.2 ± 0.4) are right-aligned in HTML
_NUMBER = re.compile(r"^[-+]?[\d.]+(e[-+]?\d+)?(x|%)?( ± [\d.]+)?$")


def render(rows: list[dict], fmt: str = "table", columns: list[str] | None = None) -> str:
    columns = columns or (list(rows[0]) if rows else [])
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().rstrip("\n")
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    if fmt == "html":
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(
            ('<td class="n">' if _NUMBER.match(v) else "<td>") + html.escape(v) + "</td>"
            for v in row) + "</tr>" for row in cells)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}; use table, markdown, html, csv or json")
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
