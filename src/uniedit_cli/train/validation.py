"""Validation grids: one row per held-out edit, columns source | instruction | target | output."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

COLUMNS = ("source", "instruction", "target", "output")


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow >= 10.1 scales its built-in font; older ones have one bitmap size
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def grid(rows: list[dict], outputs: list, *, title: str = "") -> Image.Image:
    """An image grid of ``rows`` (dicts with ``source``, ``instruction``, ``target``) and their outputs.

    Small training images are scaled up (nearest neighbour, so pixels stay visible) to a cell of
    at least 128 px; large ones are scaled down to 384 px.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("no validation rows to draw")
    side = max(img.width for row in rows for img in (row["source"], row["target"]))
    cell = min(max(side, 128), 384)
    pad, header = 6, 22 + (18 if title else 0)
    width = len(COLUMNS) * (cell + pad) + pad
    height = header + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    if title:
        draw.text((pad, 4), title, fill=(40, 40, 40), font=font)
    for c, name in enumerate(COLUMNS):
        draw.text((pad + c * (cell + pad), header - 18), name, fill=(90, 90, 90), font=font)
    for r, (row, output) in enumerate(zip(rows, outputs)):
        top = header + r * (cell + pad)
        for c, name in enumerate(COLUMNS):
            left = pad + c * (cell + pad)
            if name == "instruction":
                draw.rectangle([left, top, left + cell - 1, top + cell - 1], fill=(255, 255, 255), outline=(220, 220, 220))
                chars = max(8, cell // 7)
                lines = textwrap.wrap(str(row["instruction"]), width=chars)[: max(1, cell // 14)]
                draw.multiline_text((left + 4, top + 4), "\n".join(lines), fill=(20, 20, 20), font=font, spacing=2)
                continue
            image = row[name] if name != "output" else output
            if image is None:
                continue
            thumb = image.convert("RGB")
            if max(thumb.size) > cell:
                thumb = thumb.copy()
                thumb.thumbnail((cell, cell), Image.BICUBIC)
            elif max(thumb.size) < cell:
                scale = cell / max(thumb.size)
                thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))),
                                     Image.NEAREST)
            canvas.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
    return canvas


def save_grid(image, folder: Path, step: int) -> Path:
    from uniedit_cli.io import save_image

    return save_image(image, Path(folder) / f"step-{step:06d}.png")
