"""A small HTML template: one page, inline CSS, plotly.js inlined once, no network needed to view it.

Everything that comes from the study (names, parameter values, reasons) goes through `esc`.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lmtune.results import fmt

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2933;
       background: #f7f8fa; }
header { background: #1f2933; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 1.5em; }
header p { margin: 4px 0 0; color: #cbd2d9; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #d9dee3; padding: 8px 32px; z-index: 10; }
nav a { margin-right: 16px; color: #2563eb; text-decoration: none; font-size: 0.95em; }
main { padding: 8px 32px 48px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e1e5ea; border-radius: 6px; padding: 12px 20px 20px;
          margin: 18px 0; }
section h2 { margin-top: 6px; font-size: 1.25em; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.92em; }
th, td { border: 1px solid #d9dee3; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #e8f6ec; font-weight: 600; }
tr.baseline td { background: #f4f1ff; }
.verdict { font-weight: 600; font-size: 1.05em; }
.note { color: #52606d; font-style: italic; }
.plot { margin: 8px 0 16px; }
.flags li { color: #9a3412; }
details summary { cursor: pointer; color: #2563eb; margin: 8px 0; }
footer { color: #7b8794; font-size: 0.85em; padding: 0 32px 24px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(headers: Sequence[str] | None, rows: Iterable[Sequence[Any]],
          row_classes: Sequence[str] | None = None) -> str:
    """An HTML table (no header row when `headers` is None); cells are escaped, numbers right-aligned."""
    out = ["<table>"]
    if headers is not None:
        out += ["<thead><tr>", *(f"<th>{esc(h)}</th>" for h in headers), "</tr></thead>"]
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cls = row_classes[i] if row_classes and i < len(row_classes) and row_classes[i] else ""
        out.append(f'<tr class="{esc(cls)}">' if cls else "<tr>")
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            out.append(f'<td class="num">{esc(fmt(v))}</td>' if num else f"<td>{esc(fmt(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


@dataclass
class Section:
    id: str
    title: str
    parts: list[str] = field(default_factory=list)  # HTML fragments, already escaped

    def text(self, sentence: str, cls: str = "") -> Section:
        self.parts.append(f'<p class="{cls}">{esc(sentence)}</p>' if cls else f"<p>{esc(sentence)}</p>")
        return self

    def html(self, fragment: str) -> Section:
        self.parts.append(fragment)
        return self


def page(title: str, subtitle: str, sections: list[Section], plotlyjs: str, footer: str) -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{"".join(s.parts)}</section>'
                   for s in sections)
    # plotly.js is inlined once in <head>; each figure's <div> only carries its data.
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style>"
            f'<script type="text/javascript">{plotlyjs}</script></head><body>'
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main><footer>{esc(footer)}</footer></body></html>\n")
