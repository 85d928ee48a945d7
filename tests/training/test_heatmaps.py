"""Attention maps as images: each head's weights as a heat map with the prompt's characters along both axes."""

import numpy as np
import torch

from src.training.heatmaps import VIRIDIS, cell_pixels, heads_image


def map_corners(image: np.ndarray) -> list[tuple[int, int]]:
    """The top-left pixel of each heat map in ``image``: a pixel of a map's colours with none above or to its left."""
    coloured = (image == VIRIDIS[0]).all(-1) | (image == VIRIDIS[-1]).all(-1)
    above, left = np.zeros_like(coloured), np.zeros_like(coloured)
    above[1:], left[:, 1:] = coloured[:-1], coloured[:, :-1]
    ys, xs = np.nonzero(coloured & ~above & ~left)
    return list(zip(ys.tolist(), xs.tolist()))


def test_each_heads_map_shows_its_weights_with_the_prompts_characters_along_both_axes():
    heads, ticks = 3, ["T", "o", "space", "b", "e", "\\n"]
    n, cell = len(ticks), cell_pixels(len(ticks))
    weights = torch.eye(n).expand(heads, n, n)  # each query reads itself: a diagonal of 1s on a field of 0s
    image = heads_image(weights, ticks, "layer 0, step 5")
    pixels = image.reshape(-1, 3)
    assert (pixels == VIRIDIS[-1]).all(-1).sum() == heads * n * cell**2  # weight 1: viridis' yellow
    assert (pixels == VIRIDIS[0]).all(-1).sum() == heads * (n * n - n) * cell**2  # weight 0: its purple
    corners = map_corners(image)
    assert len(corners) == heads
    # another character at position 1: the ink changes beside row 1 and under column 1 of each map, nowhere else
    changed = np.nonzero((image != heads_image(weights, ticks[:1] + ["a"] + ticks[2:], "layer 0, step 5")).any(-1))
    seen = set()
    for y, x in zip(*changed):
        # a row label is left of the nearest map to its right, a column label under the nearest map above it
        rows = [(left, top) for top, left in corners if top + cell <= y < top + 2 * cell and x < left]
        columns = [(-top, left) for top, left in corners if left + cell <= x < left + 2 * cell and y >= top + n * cell]
        assert rows or columns, f"pixel {(y, x)} changed, away from row 1 and column 1 of every map"
        seen |= {("row", *min(rows))} if rows else {("column", *min(columns))}
    assert len(seen) == 2 * heads  # each map's row 1 and column 1


def test_a_diverged_runs_maps_are_drawn_not_raised():
    weights = torch.full((2, 4, 4), float("nan"))
    image = heads_image(weights, list("abcd"), "layer 0, step 5")
    assert (image.reshape(-1, 3) == VIRIDIS[0]).all(-1).sum() == 2 * 16 * cell_pixels(4) ** 2  # drawn as weight 0
