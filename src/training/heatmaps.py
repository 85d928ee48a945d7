"""Attention maps as images: each head's weights as a heat map, the prompt's characters along both axes, drawn with
Pillow straight into pixels: matplotlib's figures of the same grid made up most of a validation's cost, at every
validation of a run (docs/experiments.md measures both)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

# viridis (matplotlib's default colour map) at 0, 1/4, 1/2, 3/4 and 1, linearly in between
VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], dtype=np.float64)
INK, GAP, TITLE = (0, 0, 0), 12, 16  # label colour; pixels between panels; a title line's height


def cell_pixels(n: int) -> int:
    """The side, in pixels, of one query-key cell for a prompt of ``n`` tokens: a map about 400 pixels wide."""
    return max(2, 400 // n)


def colours(weights: torch.Tensor) -> np.ndarray:
    """``weights`` (..., in [0, 1]) as viridis RGB bytes (..., 3); NaN (a diverged run's) as 0, not an error."""
    w = weights.nan_to_num(0.0).clamp(0, 1).numpy().astype(np.float64) * (len(VIRIDIS) - 1)
    low = np.minimum(np.floor(w).astype(int), len(VIRIDIS) - 2)
    frac = (w - low)[..., None]
    return np.rint(VIRIDIS[low] * (1 - frac) + VIRIDIS[low + 1] * frac).astype(np.uint8)


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow's own scalable font (needs FreeType)
    except (TypeError, OSError):  # no FreeType: the fixed bitmap font
        return ImageFont.load_default()


def put(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, face, across: float = 0, down: float = 0) -> None:
    """``text`` with its box's point (``across``, ``down``: 0 left or top, 0.5 centre, 1 right or bottom) at (x, y);
    by hand, as Pillow's bitmap font (no FreeType) takes no anchors."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
    draw.text((x - left - across * (right - left), y - top - down * (bottom - top)), text, fill=INK, font=face)


def labels_strip(ticks: list[str], cell: int, face: ImageFont.ImageFont, width: int) -> Image.Image:
    """The row labels: ``width`` pixels wide, a row of ``cell`` pixels per tick, each right-aligned to the map."""
    strip = Image.new("RGB", (width, cell * len(ticks)), "white")
    draw = ImageDraw.Draw(strip)
    for i, tick in enumerate(ticks):
        put(draw, width - 2, i * cell + cell / 2, tick, face, across=1, down=0.5)
    return strip


def heads_image(weights: torch.Tensor, ticks: list[str], title: str) -> np.ndarray:
    """A grid of heat maps (H, W, 3 bytes), one per head of ``weights`` (nh, T, T): rows are queries, columns the
    keys they read, each axis labelled with the prompt's characters (``ticks``, T of them), the columns' upwards."""
    heads, n = weights.size(0), len(ticks)
    cell = cell_pixels(n)
    side, face = n * cell, font(min(max(cell + 1, 6), 12))
    margin = 4 + max(math.ceil(face.getlength(t)) for t in ticks)  # room for the longest label
    cols = math.ceil(math.sqrt(heads))
    rows = math.ceil(heads / cols)
    panel_w, panel_h = margin + side + GAP, TITLE + side + margin + GAP
    canvas = Image.new("RGB", (cols * panel_w + GAP, 2 * TITLE + rows * panel_h), "white")
    draw, heading = ImageDraw.Draw(canvas), font(12)
    put(draw, canvas.width / 2, 4, f"attention weights, {title} (row: query, column: key)", heading, across=0.5)
    row_labels = labels_strip(ticks, cell, face, margin)
    column_labels = row_labels.rotate(90, expand=True)  # right-aligned rows become columns read upwards from the top
    maps = colours(weights.float()).repeat(cell, axis=1).repeat(cell, axis=2)  # (nh, side, side, 3)
    for h in range(heads):
        x, y = GAP + (h % cols) * panel_w, 2 * TITLE + (h // cols) * panel_h
        put(draw, x + margin + side / 2, y + 2, f"head {h}", heading, across=0.5)
        canvas.paste(row_labels, (x, y + TITLE))
        canvas.paste(Image.fromarray(maps[h]), (x + margin, y + TITLE))
        canvas.paste(column_labels, (x + margin, y + TITLE + side))
    return np.asarray(canvas)
