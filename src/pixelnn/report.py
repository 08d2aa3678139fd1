"""Small, dependency-free HTML pages for results people look at (demo, training reports)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from pixelnn.io import write_text

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img.grid{image-rendering:pixelated;max-width:100%;border:1px solid #ddd}
figure{margin:1em 0}figcaption{color:#555;font-size:.92em}
code{background:#f4f4f4;padding:0 .25em}
"""


@dataclass
class Section:
    """A titled block: paragraphs, an optional table (header + rows) and figures (path, caption)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: list[list[str]] | None = None
    figures: list[tuple[str, str]] = field(default_factory=list)


def render(title: str, sections: list[Section], intro: str = "") -> str:
    """Render sections to an HTML string (text is escaped; figure paths are relative URLs)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    if intro:
        out.append(f"<p>{html.escape(intro)}</p>")
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        out += [f"<p>{html.escape(p)}</p>" for p in s.paragraphs]
        if s.table:
            head, *rows = s.table
            out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows]
            out.append("</table>")
        for src, caption in s.figures:
            out.append(f"<figure><img class='grid' src='{html.escape(src)}' alt='{html.escape(caption)}'>"
                       f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    out.append("</body></html>\n")
    return "\n".join(out)


def write_page(path: str | Path, title: str, sections: list[Section], intro: str = "") -> Path:
    """Write an HTML page atomically and return its path."""
    write_text(path, render(title, sections, intro))
    return Path(path)
