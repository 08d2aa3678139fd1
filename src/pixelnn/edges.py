"""Edge maps of photos, as inputs for the ``edges`` task.

All edge maps follow the convention of pix2pix's edges2shoes / edges2handbags data: one channel,
black strokes (0) on a white (255) background.

- :func:`hed_edge_maps`: HED edge probabilities (:mod:`pixelnn.models.hed`) post-processed like
  pix2pix's ``PostprocessHED.m``: non-maximum suppression across the edges, a threshold,
  morphological thinning and removal of small fragments, which gives clean one-pixel contours;
- :func:`canny_edge_maps`: Canny edges of the grayscale image (fast, no network, noisier).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from pixelnn.config import AUTOCASTS
from pixelnn.devices import resolve_autocast

log = logging.getLogger(__name__)


def _check_photos(photos: np.ndarray) -> np.ndarray:
    photos = np.asarray(photos)
    if photos.ndim != 4 or photos.shape[-1] != 3 or photos.dtype != np.uint8:
        raise ValueError(f"photos must be (N, H, W, 3) uint8, got {photos.shape} {photos.dtype}")
    return photos


def _to_strokes(edges: np.ndarray) -> np.ndarray:
    """(N, H, W) bool edges -> (N, H, W, 1) uint8, 0 on edges and 255 elsewhere."""
    return np.where(edges, 0, 255).astype(np.uint8)[..., None]


# --------------------------------------------------------------------------------------------------
# HED


#: Most pixels (of the enlarged images) in one HED forward pass: ``batch_size`` is lowered to fit it, so memory
#: stays about 0.75 GB (HED needs ~700 bytes a pixel) whatever the photo size and scale. 16 images of 256 x 256:
#: the batch of the default tasks (96 x 96 at scale 2, 128 x 128 at scale 2) is not lowered.
HED_BATCH_PIXELS = 16 * 256 * 256


def hed_probability(photos: np.ndarray, batch_size: int = 16, progress: bool = False,
                    device: str = "cpu", scale: float = 1.0, autocast: str = "off") -> np.ndarray:
    """HED edge probabilities.

    Parameters
    ----------
    photos : ndarray, (N, H, W, 3) uint8
        RGB photos.
    batch_size : int
        Images per forward pass, at most; fewer when the enlarged images would hold more than
        :data:`HED_BATCH_PIXELS` pixels (at least one image a pass).
    progress : bool
        Show a tqdm progress bar.
    device : str
        Torch device to run HED on.
    scale : float
        Run HED on the photos enlarged ``scale`` times (bicubic), then average the probabilities
        back down to (H, W) (area interpolation). HED's strokes have a fixed width in pixels, so on
        small photos (96x96) ``scale=2`` gives sharper, better closed contours, for about 4x the time.
        1 runs HED on the photos as they are (the exact port of the original model).
    autocast : {'off', 'bf16', 'auto'}
        ``bf16`` runs the network under ``torch.autocast`` in bfloat16 (the pre- and post-processing
        stay float32): 2x the images/s where the device computes bfloat16 natively (AVX512-BF16/AMX
        CPUs, Ampere+ GPUs; measured at scales 1 and 2), with probabilities within about 0.02 of
        float32's, 2-10% of the thinned edge pixels different and 0.4-1% more than a pixel away
        (docs/results.md). ``auto`` is bf16 exactly where
        it is native (:func:`pixelnn.devices.resolve_autocast`); ``off`` (the default) is float32.

    Returns
    -------
    ndarray, (N, H, W) float32
        Fused edge probabilities in [0, 1] (1 = edge).
    """
    import contextlib

    import torch
    import torch.nn.functional as F

    from pixelnn.models.hed import load_hed, preprocess

    photos = _check_photos(photos)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if autocast not in AUTOCASTS:
        raise ValueError(f"invalid autocast {autocast!r}; valid: {', '.join(AUTOCASTS)}")
    n, h, w, _ = photos.shape
    out = np.empty((n, h, w), dtype=np.float32)
    if n == 0:
        return out
    big = (max(1, round(h * scale)), max(1, round(w * scale)))
    batch_size = max(1, min(batch_size, HED_BATCH_PIXELS // (big[0] * big[1])))
    model = load_hed(device)
    dev = torch.device(device)
    bf16 = resolve_autocast(autocast, dev, option="--hed-autocast") == "bf16"
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="HED edges", unit="img")
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                x = preprocess(photos[start:start + batch_size], device=device)  # (B, 3, H, W)
                if big != (h, w):
                    x = F.interpolate(x, size=big, mode="bicubic", align_corners=False)  # (B, 3, sH, sW)
                with torch.autocast(dev.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                    p = model(x.contiguous(memory_format=torch.channels_last))  # (B, 1, sH, sW)
                p = p.float()
                if big != (h, w):
                    p = F.interpolate(p, size=(h, w), mode="area")  # (B, 1, H, W)
                out[start:start + batch_size] = p[:, 0].float().cpu().numpy()  # (B, H, W)
                if bar is not None:
                    bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
    return out


def _conv_tri(images: np.ndarray, r: int) -> np.ndarray:
    """Piotr Dollar's ``convTri``: separable triangle filter of radius ``r``, symmetric padding.

    ``images`` is (N, H, W); the filter runs over H and W.
    """
    if r <= 0:
        return images
    f = np.concatenate([np.arange(1, r + 2), np.arange(r, 0, -1)]).astype(np.float32) / (r + 1) ** 2
    images = ndimage.convolve1d(images, f, axis=-2, mode="reflect")  # scipy 'reflect' = MATLAB 'symmetric'
    return ndimage.convolve1d(images, f, axis=-1, mode="reflect")


def _gradient(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``gradient`` of (N, H, W) maps: central differences, one-sided at the borders.

    Returns (d/dx, d/dy), x along W and y along H.
    """
    gy, gx = np.gradient(images, axis=(-2, -1))
    return gx, gy


def edge_orientation(prob: np.ndarray, smooth: int = 4) -> np.ndarray:
    """Orientation of the edge normal, as pix2pix's ``EdgeNMS`` (from the structured-edges toolbox).

    Parameters
    ----------
    prob : ndarray, (N, H, W) float32
        Edge strength.
    smooth : int
        Radius of the triangle filter applied before each derivative.

    Returns
    -------
    ndarray, (N, H, W) float32
        Angle in [0, pi) of the direction across the edge, measured from +x (along W) towards +y
        (along H).
    """
    ox, oy = _gradient(_conv_tri(prob, smooth))
    oxx, _ = _gradient(_conv_tri(ox, smooth))
    oxy, oyy = _gradient(_conv_tri(oy, smooth))
    # The toolbox has sign(-oxy), which is 0 where oxy == 0 exactly (perfectly horizontal edges in
    # synthetic images): the angle then collapses to 0, the wrong normal. Take the sign of 0 as +1.
    sign = np.where(oxy > 0, -1.0, 1.0).astype(np.float32)
    return np.mod(np.arctan(oyy * sign / (oxx + 1e-5)), np.pi).astype(np.float32)


def _interp(images: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear lookup ``images[n, y, x]`` at real coordinates, clamped as in ``edgesNmsMex``."""
    n, h, w = images.shape
    x = np.clip(x, 0, w - 1.001)
    y = np.clip(y, 0, h - 1.001)
    x0 = x.astype(np.int64)
    y0 = y.astype(np.int64)
    dx, dy = x - x0, y - y0
    b = np.arange(n)[:, None, None]
    return (images[b, y0, x0] * (1 - dx) * (1 - dy) + images[b, y0, x0 + 1] * dx * (1 - dy)
            + images[b, y0 + 1, x0] * (1 - dx) * dy + images[b, y0 + 1, x0 + 1] * dx * dy)


def edge_nms(prob: np.ndarray, orientation: np.ndarray, radius: int = 1, border: int = 5,
             margin: float = 1.01) -> np.ndarray:
    """Non-maximum suppression across edges, as ``edgesNmsMex`` of the structured-edges toolbox.

    A pixel is zeroed when ``margin`` times its strength is below the (bilinearly interpolated)
    strength at distance 1..``radius`` on either side along the edge normal. Edges within
    ``border`` pixels of the image border are then faded linearly to 0 at the border.

    Parameters
    ----------
    prob : ndarray, (N, H, W) float32
        Edge strength.
    orientation : ndarray, (N, H, W) float32
        Normal direction, see :func:`edge_orientation`.
    radius : int
    border : int
    margin : float

    Returns
    -------
    ndarray, (N, H, W) float32
        Suppressed edge strength.
    """
    n, h, w = prob.shape
    prob = prob.astype(np.float32)
    out = prob.copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cos, sin = np.cos(orientation), np.sin(orientation)
    for d in range(-radius, radius + 1):
        if d:
            out[margin * prob < _interp(prob, xx + d * cos, yy + d * sin)] = 0
    s = min(border, w // 2, h // 2)
    if s > 0:
        ramp = np.arange(s, dtype=np.float32) / s  # 0, 1/s, ..., (s-1)/s
        out[:, :, :s] *= ramp
        out[:, :, w - s:] *= ramp[::-1]
        out[:, :s, :] *= ramp[:, None]
        out[:, h - s:, :] *= ramp[::-1, None]
    return out


def remove_small_edges(edges: np.ndarray, min_size: int) -> np.ndarray:
    """Drop 8-connected edge fragments of fewer than ``min_size`` pixels (MATLAB ``bwareaopen``).

    Parameters
    ----------
    edges : ndarray, (H, W) bool
    min_size : int

    Returns
    -------
    ndarray, (H, W) bool
    """
    if min_size <= 1 or not edges.any():
        return edges
    labels, _ = ndimage.label(edges, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def postprocess_hed(prob: np.ndarray, threshold: float = 25 / 255, min_size: int = 5, smooth: int = 4,
                    nms_radius: int = 1, border: int = 5) -> np.ndarray:
    """Binary contours from HED probabilities, after pix2pix's ``PostprocessHED.m``.

    Non-maximum suppression along the edge normal, threshold, thinning to one pixel
    (``skimage.morphology.thin``), removal of fragments smaller than ``min_size`` pixels.

    Parameters
    ----------
    prob : ndarray, (N, H, W) float
        HED edge probabilities in [0, 1].
    threshold : float
        Keep suppressed edges with strength >= threshold (pix2pix: 25/255).
    min_size : int
        Smallest 8-connected fragment kept, in pixels (pix2pix: 5).
    smooth : int
        Triangle-filter radius for the orientation estimate (pix2pix: 4).
    nms_radius : int
        Suppression distance in pixels (pix2pix: 1).
    border : int
        Edges fade out over this many pixels at the image border (pix2pix: 5).

    Returns
    -------
    ndarray, (N, H, W) bool
        True on edges.
    """
    from skimage.morphology import thin

    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 3:
        raise ValueError(f"prob must be (N, H, W), got {prob.shape}")
    if prob.shape[0] == 0 or min(prob.shape[1:]) < 3:  # nothing to find (or to differentiate)
        return np.zeros(prob.shape, dtype=bool)
    nms = edge_nms(prob, edge_orientation(prob, smooth), radius=nms_radius, border=border)
    edges = nms >= max(threshold, np.finfo(np.float32).eps)
    return np.stack([remove_small_edges(thin(e), min_size) for e in edges])


def hed_edge_maps(photos: np.ndarray, progress: bool = False, batch_size: int = 16, device: str = "cpu",
                  scale: float = 2.0, threshold: float = 25 / 255, min_size: int = 5, smooth: int = 4,
                  nms_radius: int = 1, border: int = 5, autocast: str = "off") -> np.ndarray:
    """pix2pix-style HED edge maps: thin black contours on white.

    Parameters
    ----------
    photos : ndarray, (N, H, W, 3) uint8
        RGB photos.
    progress : bool
        Show a progress bar while HED runs.
    batch_size, device, scale, autocast
        See :func:`hed_probability`. The default ``scale=2`` suits 96x96 photos; use 1 for
        photos of 256x256 or more (pix2pix ran HED on 256x256 images).
    threshold, min_size, smooth, nms_radius, border
        See :func:`postprocess_hed`.

    Returns
    -------
    ndarray, (N, H, W, 1) uint8
        0 on edges, 255 elsewhere.
    """
    prob = hed_probability(photos, batch_size=batch_size, progress=progress, device=device,
                           scale=scale, autocast=autocast)  # (N, H, W)
    edges = postprocess_hed(prob, threshold=threshold, min_size=min_size, smooth=smooth,
                            nms_radius=nms_radius, border=border)  # (N, H, W) bool
    log.debug("HED edge maps of %d photos: %.1f%% edge pixels", len(edges), 100 * edges.mean() if edges.size else 0)
    return _to_strokes(edges)


# --------------------------------------------------------------------------------------------------
# Canny


def canny_edge_maps(photos: np.ndarray, sigma: float = 2.0, low_threshold: float = 0.05,
                    high_threshold: float = 0.15) -> np.ndarray:
    """Canny edges (``skimage.feature.canny``) of the grayscale photos, black on white.

    Parameters
    ----------
    photos : ndarray, (N, H, W, 3) uint8
        RGB photos.
    sigma : float
        Gaussian smoothing before the gradient.
    low_threshold, high_threshold : float
        Hysteresis thresholds on the gradient magnitude of the [0, 1] grayscale image.

    Returns
    -------
    ndarray, (N, H, W, 1) uint8
        0 on edges, 255 elsewhere.
    """
    from skimage.color import rgb2gray
    from skimage.feature import canny

    photos = _check_photos(photos)
    n, h, w, _ = photos.shape
    edges = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        edges[i] = canny(rgb2gray(photos[i]), sigma=sigma, low_threshold=low_threshold,
                         high_threshold=high_threshold)
    return _to_strokes(edges)
