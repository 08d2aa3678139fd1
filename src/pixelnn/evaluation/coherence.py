"""Coherence of a composition, from its correspondences: the seam rate, and how much the seams show.

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


def region_seam_rates(exemplar: np.ndarray, source_y: np.ndarray, source_x: np.ndarray, region: np.ndarray,
                      band: int = 2) -> dict[str, float]:
    """Seam rates of a region result (issue 14) at its region borders and away from them.

    Parameters
    ----------
    exemplar, source_y, source_x : ndarray, (..., H, W) int
        Correspondences of one or more outputs.
    region : ndarray, (H, W) int
        The region map (:attr:`pixelnn.pipeline.SynthesisResult.region`).
    band : int
        Pairs with a pixel within ``band`` pixels (chessboard distance) of a pixel of another region,
        that do not cross a border themselves, count as ``band``.

    Returns
    -------
    dict
        ``crossing``: seam rate of the 4-neighbour pairs whose pixels lie in different regions (a seam
        there is unavoidable unless both sets share the exemplar); ``band``: of the pairs near a border;
        ``inside``: of all other pairs; and ``pairs_crossing``, ``pairs_band``, ``pairs_inside``, their
        counts per output. Rates are NaN where there is no such pair.
    """
    horizontal, vertical = seam_mask(exemplar, source_y, source_x)
    out: dict[str, float] = {}
    for name, (mh, mv) in _region_pairs(region, band).items():
        pairs = int(mh.sum() + mv.sum())
        seams = (horizontal & mh).sum() + (vertical & mv).sum()
        n_out = int(np.prod(horizontal.shape[:-2])) if horizontal.ndim > 2 else 1
        out[name] = float(seams / (pairs * n_out)) if pairs else float("nan")
        out[f"pairs_{name}"] = pairs
    return out


def _region_pairs(region: np.ndarray, band: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The 4-neighbour pairs of a region map as (horizontal (H, W-1), vertical (H-1, W)) bool masks:
    ``crossing`` a border, in the ``band`` beside one, and ``inside``."""
    from pixelnn.regions import border_pixels

    region = np.asarray(region)
    near = border_pixels(region)
    for _ in range(max(band - 1, 0)):  # grow the border by one pixel per step (8-neighbourhood)
        grown = near.copy()
        grown[1:] |= near[:-1]
        grown[:-1] |= near[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        near = grown
    cross_h, cross_v = region[:, 1:] != region[:, :-1], region[1:, :] != region[:-1, :]
    band_h = (near[:, 1:] | near[:, :-1]) & ~cross_h if band > 0 else np.zeros_like(cross_h)
    band_v = (near[1:, :] | near[:-1, :]) & ~cross_v if band > 0 else np.zeros_like(cross_v)
    return {"crossing": (cross_h, cross_v), "band": (band_h, band_v),
            "inside": (~cross_h & ~band_h, ~cross_v & ~band_v)}


def region_colour_steps(outputs: np.ndarray, region: np.ndarray, band: int = 2) -> dict[str, float]:
    """The visible side of a seam: the mean colour step between 4-neighbours at region borders and away.

    Parameters
    ----------
    outputs : ndarray, (..., H, W, 3) uint8
        One or more outputs (a region result's, or another result's at the same places).
    region : ndarray, (H, W) int
        The region map whose pairs are split, as in :func:`region_seam_rates`.
    band : int

    Returns
    -------
    dict
        ``crossing``, ``band``, ``inside``: the mean over those pairs (and outputs) of
        ``mean_c |out_i,c - out_j,c|`` in uint8 levels (0-255). A border that shows has a larger
        ``crossing`` step than the same pairs of an unconstrained result.
    """
    step_h, step_v = _colour_steps(outputs)  # (..., H, W-1), (..., H-1, W)
    n_out = int(np.prod(step_h.shape[:-2])) if step_h.ndim > 2 else 1
    out: dict[str, float] = {}
    for name, (mh, mv) in _region_pairs(region, band).items():
        pairs = int(mh.sum() + mv.sum())
        total = step_h[..., mh].sum() + step_v[..., mv].sum()
        out[name] = float(total / (pairs * n_out)) if pairs else float("nan")
    return out


def _colour_steps(outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over RGB of ``|out_i - out_j|`` for the horizontal (..., H, W-1) and vertical (..., H-1, W) pairs."""
    im = np.asarray(outputs, np.float64)
    return (np.abs(im[..., :, 1:, :] - im[..., :, :-1, :]).mean(axis=-1),
            np.abs(im[..., 1:, :, :] - im[..., :-1, :, :]).mean(axis=-1))


def seam_visibility(outputs: np.ndarray, exemplar: np.ndarray, source_y: np.ndarray,
                    source_x: np.ndarray) -> np.ndarray | float:
    """How much the seams of a composition show: the excess of the mean colour step across its seam pairs
    over the mean colour step across its other pairs, relative to the latter (``seam / other - 1``).

    A seam (:func:`seam_mask`) joins two copied pieces. Where pieces meet seamlessly their step is like
    any other neighbour pair's and the visibility is near 0; a patchwork of mismatched pieces has
    large steps at its seams (0.3: seams step 30% more than the rest).

    Parameters
    ----------
    outputs : ndarray, (..., H, W, 3) uint8
    exemplar, source_y, source_x : ndarray, (..., H, W) int
        The outputs' correspondences.

    Returns
    -------
    float or ndarray of shape (...)
        One value per output; NaN for an output without seams or without non-seam pairs.
    """
    horizontal, vertical = seam_mask(exemplar, source_y, source_x)
    step_h, step_v = _colour_steps(outputs)
    if step_h.shape != horizontal.shape:
        raise ValueError(f"outputs {np.shape(outputs)} do not match correspondences {np.shape(exemplar)}")
    axes = (-2, -1)
    seam_sum = (step_h * horizontal).sum(axis=axes) + (step_v * vertical).sum(axis=axes)
    seam_n = horizontal.sum(axis=axes) + vertical.sum(axis=axes)
    rest_sum = (step_h * ~horizontal).sum(axis=axes) + (step_v * ~vertical).sum(axis=axes)
    rest_n = (~horizontal).sum(axis=axes) + (~vertical).sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (seam_sum / seam_n) / (rest_sum / rest_n) - 1
    ratio = np.where((seam_n > 0) & (rest_n > 0), ratio, np.nan)
    return float(ratio) if np.ndim(ratio) == 0 else ratio
