"""Seam rate: known answers on hand-built correspondences."""

from __future__ import annotations

import numpy as np
import pytest

from pixelnn.evaluation.coherence import seam_mask, seam_rate


def _identity(h: int, w: int, exemplar: int = 0):
    sy, sx = np.mgrid[0:h, 0:w]
    return np.full((h, w), exemplar), sy, sx


def test_single_copy_has_no_seams_even_when_shifted():
    e, sy, sx = _identity(5, 6)
    assert seam_rate(e, sy, sx) == 0.0
    assert seam_rate(e, sy + 3, sx + 7) == 0.0  # a translated copy still continues


def test_every_pixel_from_elsewhere_is_all_seams():
    h, w = 4, 4
    e = np.zeros((h, w), int)
    sy = np.zeros((h, w), int)
    sx = np.zeros((h, w), int)  # every pixel copies the same source pixel: no pair continues
    assert seam_rate(e, sy, sx) == 1.0


def test_two_halves_from_two_exemplars():
    h, w = 4, 6
    e, sy, sx = _identity(h, w)
    e[:, 3:] = 1  # right half from another exemplar, same positions: one vertical seam line
    horizontal, vertical = seam_mask(e, sy, sx)
    assert horizontal.sum() == h and horizontal[:, 2].all() and not vertical.any()
    pairs = h * (w - 1) + (h - 1) * w
    assert seam_rate(e, sy, sx) == pytest.approx(h / pairs)


def test_batched_rates_and_bad_shapes():
    e, sy, sx = _identity(3, 3)
    e2 = e.copy()
    e2[0, 0] = 5  # one pixel from elsewhere breaks its 2 pairs
    rates = seam_rate(np.stack([e, e2]), np.stack([sy, sy]), np.stack([sx, sx]))
    assert rates.shape == (2,) and rates[0] == 0 and rates[1] == pytest.approx(2 / 12)
    with pytest.raises(ValueError):
        seam_rate(e, sy[:2], sx)


def test_seam_visibility_known_answer():
    from pixelnn.evaluation.coherence import seam_visibility

    h = w = 6
    yy, xx = np.mgrid[0:h, 0:w]
    ex = np.where(xx >= 3, 1, 0)[None]  # two exemplars copied in place: one vertical seam line
    img = np.zeros((1, h, w, 3), np.uint8)
    img[..., 0] = (xx * 2)[None]  # a ramp: every horizontal step is 2 levels in red
    img[0, :, 3:, 0] += 20  # ... and the seam adds 20
    v = seam_visibility(img, ex, yy[None], xx[None])
    # seam pairs: 6 horizontal steps of 22/3 (mean over RGB); other pairs: 24 horizontal of 2/3, 30 vertical of 0
    assert v.shape == (1,) and np.isclose(v[0], (22 / 3) / ((24 * 2 / 3) / 54) - 1)
    assert np.isnan(seam_visibility(img[0], np.zeros((h, w), int), yy, xx))  # one copy: no seam
