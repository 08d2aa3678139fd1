"""Input modalities: derive the incomplete signal x from a photo y.

All functions take and return uint8 arrays in (N, H, W, C) layout.
"""

from __future__ import annotations

import numpy as np

from pixelnn.config import TaskConfig
from pixelnn.errors import PixelNNError


def area_downsample(photos: np.ndarray, factor: int) -> np.ndarray:
    """Box-filter (area) downsampling by an integer factor, as for the paper's 12x12 inputs.

    Parameters
    ----------
    photos : ndarray, (N, H, W, C) uint8
        H and W must be divisible by ``factor``.
    factor : int

    Returns
    -------
    ndarray, (N, H // factor, W // factor, C) uint8
    """
    n, h, w, c = photos.shape
    if h % factor or w % factor:
        raise PixelNNError(f"image size {h}x{w} is not divisible by the downsampling factor {factor}")
    x = photos.reshape(n, h // factor, factor, w // factor, factor, c).astype(np.float32).mean(axis=(2, 4))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def derive_inputs(photos: np.ndarray, task: TaskConfig, progress: bool = False) -> np.ndarray:
    """Derive inputs x from photos y with the task's rule.

    Parameters
    ----------
    photos : ndarray, (N, S, S, 3) uint8
    task : TaskConfig
    progress : bool
        Show a progress bar (HED on many images takes minutes).

    Returns
    -------
    ndarray, (N, s, s, C) uint8
        ``superres``: (N, S/f, S/f, 3). ``edges``: (N, S, S, 1), black strokes (0) on white (255).
    """
    photos = np.asarray(photos)
    if photos.ndim != 4 or photos.shape[-1] != 3 or photos.dtype != np.uint8:
        raise ValueError(f"photos must be (N, H, W, 3) uint8, got {photos.shape} {photos.dtype}")
    if task.name == "superres":
        return area_downsample(photos, task.factor)
    if task.name == "edges":
        from pixelnn import edges

        if task.edge_method == "hed":
            return edges.hed_edge_maps(photos, progress=progress, scale=task.hed_scale)
        return edges.canny_edge_maps(photos)
    raise PixelNNError("task 'paired' takes its inputs from the data; they cannot be derived from a photo")
