"""A report as typed sections, rendered to Markdown and to one self-contained HTML page (inline
CSS, images as data URIs, no script, no network), so the two never disagree."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from ..io.table import render

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1150px;
margin:2em auto;padding:0 1em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #d55e00;padding-bottom:.2em}
h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}td.n{text-align:right}
.scroll{overflow-x:auto}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
pre{background:#f6f6f6;padding:.7em;overflow-x:auto;font-size:.85em}
.note{background:#fff6e5;border-left:4px solid #e69f00;padding:.5em .8em}
"""


def _text(value) -> str:
    """Escape for an HTML text node (quotes stay readable: they need no escaping there)."""
    return html.escape(str(value), quote=False)


def _data_uri(path: Path) -> str:
    kind = {"png": "image/png", "svg": "image/svg+xml"}[Path(path).suffix[1:].lower()]
    return f"data:{kind};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


@dataclass(frozen=True)
class Heading:
    text: str

    def markdown(self, root: Path) -> list[str]:
        return [f"## {self.text}", ""]

    def html(self) -> str:
        return f"<h2>{_text(self.text)}</h2>"


@dataclass(frozen=True)
class Para:
    text: str

    def markdown(self, root: Path) -> list[str]:
        return [self.text, ""]

    def html(self) -> str:
        return f"<p>{_text(self.text)}</p>"


@dataclass(frozen=True)
class Note:
    text: str

    def markdown(self, root: Path) -> list[str]:
        return [f"> **Note:** {self.text}", ""]

    def html(self) -> str:
        return f'<p class="note">{_text(self.text)}</p>'


@dataclass(frozen=True)
class Pre:
    text: str

    def markdown(self, root: Path) -> list[str]:
        return ["```", self.text, "```", ""]

    def html(self) -> str:
        return f"<pre>{_text(self.text)}</pre>"


@dataclass(frozen=True)
class Bullets:
    items: list

    def markdown(self, root: Path) -> list[str]:
        return [f"- {item}" for item in self.items] + [""]

    def html(self) -> str:
        return "<ul>" + "".join(f"<li>{_text(i)}</li>" for i in self.items) + "</ul>"


@dataclass(frozen=True)
class Table:
    rows: list

    def markdown(self, root: Path) -> list[str]:
        return [render(self.rows, "markdown") if self.rows else "(no rows)", ""]

    def html(self) -> str:
        if not self.rows:
            return "<p>(no rows)</p>"
        # its own scroll box: a wide table scrolls instead of being cut or widening the page
        return f'<div class="scroll">{render(self.rows, "html")}</div>'


@dataclass(frozen=True)
class Figure:
    path: Path
    caption: str

    def markdown(self, root: Path) -> list[str]:
        rel = Path(self.path).resolve().relative_to(Path(root).resolve())
        return [f"![{self.caption}]({rel.as_posix()})", "", f"*{self.caption}*", ""]

    def html(self) -> str:
        return (f'<figure><img src="{_data_uri(self.path)}" alt="{html.escape(self.caption)}">'
                f"<figcaption>{_text(self.caption)}</figcaption></figure>")


def to_markdown(title: str, sections: list, root: Path) -> str:
    """Markdown beside the directory `root` (figures linked relative to it)."""
    lines = [f"# {title}", ""]
    for section in sections:
        lines += section.markdown(root)
    return "\n".join(lines)


def to_html(title: str, sections: list, root: Path) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_text(title)}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>{_text(title)}</h1>"]
    parts += [section.html() for section in sections]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
