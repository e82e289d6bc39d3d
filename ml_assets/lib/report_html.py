"""One self-contained HTML page for a report: text, PNG images and tables, nothing fetched from outside.

The page opens from disk, from an MLflow artifact view or from an email attachment alike: images are
base64 data URIs, the CSS is inline, and there are no scripts and no external links. All text is
escaped, so a feature or slice value that happens to contain markup stays text.
"""

from __future__ import annotations

import base64
import html
import math
import re

import polars as pl

MAX_TABLE_ROWS = 200  # a longer table is cut here, with a note: the page is for reading, not for data
_PLACE = re.compile(r"\[(image|table):([^\]]+)\]")

_CSS = """
body { font-family: system-ui, sans-serif; font-size: 14px; color: #222; max-width: 60rem;
       margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
figure { margin: 1rem 0; } figcaption, .note { color: #666; font-size: 0.85rem; }
img { max-width: 100%; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.85rem; }
th, td { padding: 0.25rem 0.6rem; border-bottom: 1px solid #e4e4e4; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def render_report(
    title: str,
    sections: list[tuple[str, str]],
    images: dict[str, bytes],
    tables: dict[str, pl.DataFrame],
) -> str:
    """The report as one HTML page (a string to write to a .html file).

    title: the page title and top heading.
    sections: (heading, text) pairs, rendered in order. Text is plain text, not HTML: blank lines
        separate paragraphs and single newlines are kept. A line that is exactly `[image:NAME]` or
        `[table:NAME]` puts images[NAME] (PNG bytes) or tables[NAME] at that place.
    images, tables: by name. Any not placed by a section are appended at the end under "Figures" and
        "Tables", in the dicts' order, so nothing passed in is silently left out.

    Placing a name that is not in images or tables raises KeyError: that is a bug in the caller.
    Floats in tables show 4 significant digits, NaN as "n/a" and null as an empty cell.
    """
    placed: set[tuple[str, str]] = set()
    body = [f"<h1>{html.escape(title)}</h1>"]
    for heading, text in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.extend(_section(text, images, tables, placed))
    rest_images = [name for name in images if ("image", name) not in placed]
    if rest_images:
        body.append("<h2>Figures</h2>")
        body.extend(_image(name, images[name]) for name in rest_images)
    rest_tables = [name for name in tables if ("table", name) not in placed]
    if rest_tables:
        body.append("<h2>Tables</h2>")
        body.extend(_table(name, tables[name]) for name in rest_tables)
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>",
            "<body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def _section(text: str, images: dict[str, bytes], tables: dict[str, pl.DataFrame], placed: set) -> list[str]:
    parts: list[str] = []
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            parts.append("<p>" + "<br>\n".join(html.escape(line) for line in paragraph) + "</p>")
            paragraph.clear()

    for line in text.splitlines():
        match = _PLACE.fullmatch(line.strip())
        if match:
            flush()
            kind, name = match.groups()
            if kind == "image":
                parts.append(_image(name, images[name]))
            else:
                parts.append(_table(name, tables[name]))
            placed.add((kind, name))
        elif line.strip():
            paragraph.append(line)
        else:
            flush()
    flush()
    return parts


def _image(name: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    alt = html.escape(name)
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
    )


def _cell(value) -> tuple[str, bool]:
    """The cell's text and whether it is a number (right-aligned)."""
    if value is None:
        return "", False
    if isinstance(value, bool):
        return str(value), False
    if isinstance(value, float):
        return ("n/a" if math.isnan(value) else f"{value:.4g}"), True
    if isinstance(value, int):
        return f"{value:,}", True
    return str(value), False


def _table(name: str, frame: pl.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(col)}</th>" for col in frame.columns)
    rows = []
    for row in frame.head(MAX_TABLE_ROWS).iter_rows():
        cells = []
        for value in row:
            text, numeric = _cell(value)
            cells.append(
                f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = f'<p class="note">{html.escape(name)}'
    if frame.height > MAX_TABLE_ROWS:
        note += f": the first {MAX_TABLE_ROWS} of {frame.height:,} rows"
    return (
        f"{note}</p>\n<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
    )
