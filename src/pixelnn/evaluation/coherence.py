"""Coherence of a composition, from its correspondences: the seam rate.

A pixel-wise composition is coherent where neighbouring output pixels copy neighbouring pixels of
the same exemplar, in the same arrangement: the pair (p, p + d) of output pixels, d = (0, 1) or
(1, 0), *continues* a copy when both come from the same exemplar and their sources differ by the
same d. The seam rate is the fraction of 4-neighbour pairs that do not continue a copy; a seam
separates two patches. A copy of one exemplar at the same positions (eq. 2) has seam rate 0; an
output whose every pixel comes from somewhere else has seam rate 1.
"""

from __future__ import annotations

import numpy as np


def seam_mask(exemplar: np.ndarray, source_y: np.ndarray, source_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the 4-neighbour pairs of an output break the copy.

    Parameters
    ----------
    exemplar, source_y, source_x : ndarray, (..., H, W) int
        Per output pixel: the exemplar it was copied from and the position in that exemplar.

    Returns
    -------
    horizontal : ndarray, (..., H, W - 1) bool
        True where pixels (y, x) and (y, x + 1) do not continue one copy.
    vertical : ndarray, (..., H - 1, W) bool
        True where pixels (y, x) and (y + 1, x) do not continue one copy.
    """
    e, sy, sx = (np.asarray(a) for a in (exemplar, source_y, source_x))
    if not e.shape == sy.shape == sx.shape or e.ndim < 2:
        raise ValueError(f"exemplar, source_y and source_x must share one (..., H, W) shape; got {e.shape}, "
                         f"{sy.shape}, {sx.shape}")
    horizontal = ~((e[..., :, 1:] == e[..., :, :-1]) & (sy[..., :, 1:] == sy[..., :, :-1])
                   & (sx[..., :, 1:] == sx[..., :, :-1] + 1))
    vertical = ~((e[..., 1:, :] == e[..., :-1, :]) & (sy[..., 1:, :] == sy[..., :-1, :] + 1)
                 & (sx[..., 1:, :] == sx[..., :-1, :]))
    return horizontal, vertical


def seam_rate(exemplar: np.ndarray, source_y: np.ndarray, source_x: np.ndarray) -> np.ndarray | float:
    """Fraction of 4-neighbour pixel pairs whose sources do not continue one copy (see the module docstring).

    Parameters
    ----------
    exemplar, source_y, source_x : ndarray, (..., H, W) int

    Returns
    -------
    float or ndarray of shape (...)
        One rate per output (a float for a single (H, W) output).
    """
    horizontal, vertical = seam_mask(exemplar, source_y, source_x)
    pairs = horizontal.shape[-1] * horizontal.shape[-2] + vertical.shape[-1] * vertical.shape[-2]
    if pairs == 0:
        raise ValueError("an output needs at least two pixels to have neighbour pairs")
    seams = horizontal.sum(axis=(-2, -1)) + vertical.sum(axis=(-2, -1))
    rate = seams / pairs
    return float(rate) if np.ndim(rate) == 0 else rate
