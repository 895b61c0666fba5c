"""Self-contained HTML pages of image grids (batch outputs now; synth previews and eval reports
reuse it). Images are linked by relative path, so the folder can be copied or served as is."""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Iterable

from uniedit_cli.io import write_text

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; } .meta { color: #666; margin-bottom: 1rem; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: .4rem .6rem; vertical-align: top; text-align: left; }
th { background: #f4f4f4; position: sticky; top: 0; }
img { width: 192px; height: auto; display: block; }
td.text { max-width: 28rem; white-space: pre-wrap; } .bad { color: #b00; }
"""


def relative(path: str | os.PathLike, start: str | os.PathLike) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_uri()


def write_gallery(path: str | os.PathLike, *, title: str, columns: list[str], rows: Iterable[dict],
                  meta: str = "") -> Path:
    """Write ``path`` as a table; each row maps a column to ``{"image": path}`` or ``{"text": str}``
    (optionally ``"bad": True`` to highlight it)."""
    path = Path(path)
    out = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style>",
           f"<h1>{html.escape(title)}</h1>"]
    if meta:
        out.append(f"<div class='meta'>{html.escape(meta)}</div>")
    out.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
    for row in rows:
        cells = []
        for column in columns:
            cell = row.get(column) or {"text": ""}
            css = " bad" if cell.get("bad") else ""
            if "image" in cell and cell["image"]:
                src = html.escape(relative(cell["image"], path.parent))
                cells.append(f"<td><a href='{src}'><img loading='lazy' src='{src}' alt='{html.escape(column)}'></a></td>")
            else:
                cells.append(f"<td class='text{css}'>{html.escape(str(cell.get('text', '')))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return write_text(path, "\n".join(out) + "\n")
