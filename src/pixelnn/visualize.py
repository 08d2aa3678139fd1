"""Pictures of results: output grids and correspondence maps (paper Fig. 5)."""

from __future__ import annotations

import colorsys

import numpy as np

from pixelnn.data.dataset import image_grid, resize_nearest, to_rgb


def palette(n: int) -> np.ndarray:
    """``n`` well-separated saturated colours, (n, 3) uint8 (golden-ratio hues)."""
    cols = [colorsys.hsv_to_rgb((0.07 + i * 0.618034) % 1.0, 0.85, 0.95) for i in range(n)]
    return (np.array(cols) * 255).round().astype(np.uint8)


def position_colors(source_y: np.ndarray, source_x: np.ndarray, size: int) -> np.ndarray:
    """Colour a source position by a 2-D colour map: red grows with x, green with y, blue opposite.

    Returns (..., 3) uint8. Neighbouring sources get similar colours, so a coherent copy shows as
    a smooth gradient and a seam as a jump.
    """
    u = source_x / max(size - 1, 1)
    v = source_y / max(size - 1, 1)
    rgb = np.stack([u, v, 1.0 - 0.5 * (u + v)], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


def correspondence_map(rank: np.ndarray, source_y: np.ndarray, source_x: np.ndarray, n_ranks: int) -> np.ndarray:
    """Each output pixel coloured by where it came from.

    Parameters
    ----------
    rank : ndarray, (H, W) int
        Neighbour rank of the source exemplar.
    source_y, source_x : ndarray, (H, W) int
        Source position.
    n_ranks : int
        Number of neighbours (palette size).

    Returns
    -------
    ndarray, (H, W, 3) uint8
        Exemplar colour (palette by rank), shaded by source position so structure stays visible.
    """
    size = rank.shape[0]
    base = palette(n_ranks)[rank].astype(np.float32)  # (H, W, 3)
    shade = position_colors(source_y, source_x, size).astype(np.float32)
    return (0.65 * base + 0.35 * shade).round().astype(np.uint8)


def correspondence_figure(output: np.ndarray, rank: np.ndarray, source_y: np.ndarray, source_x: np.ndarray,
                          set_ranks: tuple[int, ...], ex_photos: np.ndarray, n_ranks: int) -> np.ndarray:
    """Figure: [output | correspondence map | source positions] over the set's exemplars, each framed in its colour.

    ``ex_photos`` are all K neighbours' photos (K, S, S, 3); only ``set_ranks`` are shown.
    """
    size = output.shape[0]
    pal = palette(n_ranks)
    framed = []
    for r in set_ranks:
        im = ex_photos[r].copy()
        im[:3], im[-3:], im[:, :3], im[:, -3:] = pal[r], pal[r], pal[r], pal[r]
        framed.append(im)
    top = np.stack([output, correspondence_map(rank, source_y, source_x, n_ranks),
                    position_colors(source_y, source_x, size)])
    return image_grid([top, np.stack(framed)])


def output_grid(stage1: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, per_row: int = 12) -> np.ndarray:
    """Grid: first row the input (enlarged) and f(x); then all outputs, ``per_row`` per row."""
    head = np.concatenate([to_rgb(resize_nearest(inputs[None], stage1.shape[0])), stage1[None]])
    return image_grid([head] + [outputs[i:i + per_row] for i in range(0, len(outputs), per_row)])


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor, (H, W[, C]) -> (H*scale, W*scale[, C]), for display."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return np.repeat(np.repeat(np.asarray(image), scale, axis=0), scale, axis=1)


def mark_pixel(image: np.ndarray, y: int, x: int, scale: int = 4, color: tuple[int, int, int] = (255, 0, 255)
               ) -> np.ndarray:
    """Enlarge an image and mark one of its pixels with a hollow square and crosshair ticks.

    Parameters
    ----------
    image : ndarray, (H, W, 3) uint8
    y, x : int
        The pixel to mark (in ``image`` coordinates).
    scale : int
        Enlargement factor (the marked pixel becomes a ``scale`` x ``scale`` block, left visible).
    color : tuple of int
        Marker colour.

    Returns
    -------
    ndarray, (H*scale, W*scale, 3) uint8
    """
    out = enlarge(np.asarray(image), scale).copy()
    h, w = out.shape[:2]
    y0, x0 = y * scale, x * scale
    r = max(2 * scale, 6)  # half side of the square around the pixel's block
    top, bottom = max(y0 - r, 0), min(y0 + scale + r, h) - 1
    left, right = max(x0 - r, 0), min(x0 + scale + r, w) - 1
    t = max(scale // 2, 1)  # line thickness
    out[top:top + t, left:right + 1] = color
    out[bottom - t + 1:bottom + 1, left:right + 1] = color
    out[top:bottom + 1, left:left + t] = color
    out[top:bottom + 1, right - t + 1:right + 1] = color
    cy, cx = y0 + scale // 2, x0 + scale // 2  # ticks from the square to the image border
    out[max(cy - t // 2, 0):cy - t // 2 + t, :max(left, 0)] = color
    out[max(cy - t // 2, 0):cy - t // 2 + t, right + 1:] = color
    out[:max(top, 0), max(cx - t // 2, 0):cx - t // 2 + t] = color
    out[bottom + 1:, max(cx - t // 2, 0):cx - t // 2 + t] = color
    return out
