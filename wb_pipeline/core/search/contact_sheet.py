"""A small PNG contact sheet: one row of photo thumbnails per duplicate group (PIL only)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

THUMB = 96
LABEL_WIDTH = 120
PAD = 4


def contact_sheet_png(
    rows: Sequence[tuple[str, Sequence[Image.Image | None]]], thumb: int = THUMB, max_per_row: int = 6
) -> bytes:
    """`rows`: (label, photos) per group; a None photo (unreadable) is drawn as a grey box.
    Labels are drawn with PIL's built-in font, so keep them ASCII (group id, size); titles belong
    in the table beside the picture."""
    if not rows:
        raise ValueError("contact_sheet_png: no rows to draw")
    columns = min(max(len(photos) for _, photos in rows), max_per_row)
    width = LABEL_WIDTH + columns * (thumb + PAD) + PAD
    height = len(rows) * (thumb + PAD) + PAD
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for r, (label, photos) in enumerate(rows):
        top = PAD + r * (thumb + PAD)
        draw.text((PAD, top + thumb // 2 - 12), label, fill="black", font=font)
        for c, photo in enumerate(list(photos)[:columns]):
            left = LABEL_WIDTH + c * (thumb + PAD)
            if photo is None:
                draw.rectangle([left, top, left + thumb - 1, top + thumb - 1], fill=(200, 200, 200))
                continue
            small = photo.convert("RGB")
            small.thumbnail((thumb, thumb))
            sheet.paste(small, (left + (thumb - small.width) // 2, top + (thumb - small.height) // 2))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
