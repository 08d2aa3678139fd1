"""The paper's surface-normal metrics (Tables 1 and 2): angular error between two normal fields.

A generated image is scored by the normals estimated from it against the normals estimated from
the real photo, with the same estimator (the paper: PixelNet; here the face mesh of
:mod:`pixelnn.normals`). Six statistics of the per-pixel angle between the two unit normals, in
degrees: **mean**, **median** and **RMSE** (lower is better), and the **% of pixels within 11.25°,
22.5° and 30°** (higher is better), the convention of Eigen & Fergus, Wang et al., Fouhey et al.
and PixelNet (the paper's refs. [2, 12, 14, 41]).

Which pixels: those inside the real photo's face mask where both normal fields are defined (a
non-zero vector; :func:`pixelnn.normals.decode_normals` gives 0 outside a map's mask). A generated
image in which no face is found has no defined pixel: it adds nothing to the statistics and is
counted instead (see :mod:`pixelnn.evaluate`).

Pooling: **over all scored pixels of all images** (the errors of every image concatenated, then
the six statistics taken once), as the NYU surface-normal evaluations of refs. [2, 12, 14, 41] and
PixelNet do; not per image and then averaged. Large faces therefore weigh more than small ones,
and the median is the median pixel, not a median of per-image medians.

All functions are plain numpy and take any leading batch shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

#: Thresholds of the "% within" statistics, in degrees.
THRESHOLDS_DEG = (11.25, 22.5, 30.0)
#: Names of the six statistics, in the paper's column order.
STATISTICS = ("mean", "median", "rmse", "within_11_25", "within_22_5", "within_30")
#: Column labels of :data:`STATISTICS`.
LABELS = {"mean": "Mean", "median": "Median", "rmse": "RMSE", "within_11_25": "11.25°", "within_22_5": "22.5°",
          "within_30": "30°"}


def defined(normals: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Where a normal field is defined: (..., 3) -> (...) bool, a vector longer than ``eps``."""
    return np.linalg.norm(np.asarray(normals, np.float64), axis=-1) > eps


def angle_map(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pixel angle in degrees between two normal fields, NaN where either is undefined.

    Parameters
    ----------
    pred, truth : ndarray, (..., 3) float
        Normals of one shape; need not be unit length (they are normalised); zero vectors are
        undefined.

    Returns
    -------
    ndarray, (...) float64
        ``degrees(arccos(clip(<p, t> / (|p| |t|), -1, 1)))`` in [0, 180].
    """
    p, t = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if p.shape != t.shape or p.shape[-1:] != (3,):
        raise ValueError(f"normal fields must be (..., 3) of one shape, got {p.shape} and {t.shape}")
    np_, nt = np.linalg.norm(p, axis=-1), np.linalg.norm(t, axis=-1)
    ok = (np_ > 1e-6) & (nt > 1e-6)
    cos = np.einsum("...k,...k->...", p, t) / np.where(ok, np_ * nt, 1.0)
    return np.where(ok, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), np.nan)


def angular_errors(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The angles (degrees) at the scored pixels: inside ``mask`` where both fields are defined.

    Parameters
    ----------
    pred, truth : ndarray, (..., 3) float
    mask : ndarray, (...) bool, optional
        The real photo's face mask (default: everywhere).

    Returns
    -------
    ndarray, (K,) float64
        K scored pixels, in C order.
    """
    ang = angle_map(pred, truth)
    keep = np.isfinite(ang)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != ang.shape:
            raise ValueError(f"mask {mask.shape} does not match the normal fields {ang.shape}")
        keep &= mask
    return ang[keep]


def angular_statistics(errors: np.ndarray | Iterable[np.ndarray]) -> dict[str, float | None]:
    """The six statistics of angular errors pooled over all pixels given.

    Parameters
    ----------
    errors : ndarray, (K,) float, or an iterable of them
        Angles in degrees; several arrays (e.g. one per image) are concatenated first: pixels are
        pooled over all images (module docstring).

    Returns
    -------
    dict
        ``mean``, ``median``, ``rmse`` (degrees) and ``within_11_25``, ``within_22_5``,
        ``within_30`` (percent of the pixels, 0-100; an angle equal to the threshold counts as
        within), plus ``pixels`` (K). All None when K = 0.
    """
    if isinstance(errors, np.ndarray):
        e = np.asarray(errors, np.float64).ravel()
    else:
        parts = [np.asarray(a, np.float64).ravel() for a in errors]
        e = np.concatenate(parts) if parts else np.zeros(0)
    if np.isnan(e).any():
        raise ValueError("angular errors contain NaN (undefined pixels must be left out)")
    out: dict[str, float | None] = {"pixels": int(e.size)}
    if not e.size:
        return {**{k: None for k in STATISTICS}, **out}
    out.update(mean=float(e.mean()), median=float(np.median(e)), rmse=float(np.sqrt(np.mean(e ** 2))))
    for name, thr in zip(STATISTICS[3:], THRESHOLDS_DEG):
        out[name] = float(100.0 * np.mean(e <= thr))
    return out


# ------------------------------------------------------------------------------ faces: estimate and score

#: Share of probed photos in which a face must be found for :func:`looks_like_faces`.
FACE_SHARE = 0.75


@dataclass
class NormalEstimate:
    """Normals estimated from images with the face mesh (:func:`estimate_face_normals`).

    Attributes
    ----------
    normals : ndarray, (N, S, S, 3) float32
        Unit normals in the view frame, 0 where undefined.
    masks : ndarray, (N, S, S) bool
    found : ndarray, (N,) bool
        A face was found (else the image's normals are all undefined).
    """

    normals: np.ndarray
    masks: np.ndarray
    found: np.ndarray


def estimate_face_normals(images: np.ndarray, batch_size: int = 64, progress: bool = False) -> NormalEstimate:
    """Normals of face images (N, S, S, 3) uint8 with :func:`pixelnn.normals.normal_maps` (float, unquantised)."""
    from pixelnn.normals import normal_maps

    res = normal_maps(np.ascontiguousarray(images), batch_size=batch_size, progress=progress, float_normals=True)
    return NormalEstimate(res.normals, res.masks, res.found)


def looks_like_faces(photos: np.ndarray, share: float = FACE_SHARE) -> bool:
    """True when the face mesh finds a face in at least ``share`` of the photos (N, S, S, 3) uint8.

    MediaPipe's presence score rejects shoes and cat heads (measured: below 0.3 on 16 of each, every
    CelebA face at 0.99-1.0), so this tells face datasets from the others.
    """
    if not len(photos):
        return False
    return bool(estimate_face_normals(photos).found.mean() >= share)


def score_outputs(outputs: NormalEstimate, real_normals: np.ndarray, real_mask: np.ndarray) -> list[np.ndarray | None]:
    """The angular errors of each output against the real photo's normals.

    Parameters
    ----------
    outputs : NormalEstimate
        Of O generated images.
    real_normals : ndarray, (S, S, 3) float
    real_mask : ndarray, (S, S) bool
        The real photo's face mask.

    Returns
    -------
    list of (ndarray (K_o,) float64 or None)
        Degrees at the pixels inside ``real_mask`` where both fields are defined; None for an output
        in which no face was found.
    """
    return [angular_errors(n, real_normals, real_mask) if f else None for n, f in zip(outputs.normals, outputs.found)]


def rand1_and_oracle(errors: list[np.ndarray | None], rand_index: int) -> tuple[np.ndarray | None, int | None]:
    """The Rand-1 output's errors, and the Oracle: the output with the lowest mean angular error.

    Parameters
    ----------
    errors : list of (ndarray (K_o,) or None)
        From :func:`score_outputs` (None: no face found).
    rand_index : int
        The Rand-1 output (the same draw as the image metrics').

    Returns
    -------
    rand1 : ndarray or None
        ``errors[rand_index]`` (None: no face in it).
    oracle : int or None
        Index of the output with the smallest per-image mean error among those with a face and at
        least one scored pixel; None when there is none.
    """
    means = [float(e.mean()) if e is not None and e.size else np.inf for e in errors]
    best = int(np.argmin(means)) if means and np.isfinite(min(means)) else None
    return errors[rand_index], best


__all__ = ["LABELS", "STATISTICS", "THRESHOLDS_DEG", "NormalEstimate", "angle_map", "angular_errors",
           "angular_statistics", "defined", "estimate_face_normals", "looks_like_faces", "rand1_and_oracle",
           "score_outputs"]
