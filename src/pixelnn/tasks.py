"""Input modalities: derive the incomplete signal x from a photo y.

All functions take and return uint8 arrays in (N, H, W, C) layout.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class DerivedInputs:
    """Inputs derived from photos (:func:`derive`).

    Attributes
    ----------
    inputs : ndarray, (N, s, s, C) uint8
    masks : ndarray, (N, S, S) bool or None
        Where each input is defined (``normals``: the face); None for tasks without a mask.
    usable : ndarray, (N,) bool
        False for photos whose input could not be derived (``normals``: no face found); their
        inputs are placeholders (:data:`pixelnn.normals.BACKGROUND`) and their masks empty.
    """

    inputs: np.ndarray
    masks: np.ndarray | None
    usable: np.ndarray


def derive(photos: np.ndarray, task: TaskConfig, progress: bool = False) -> DerivedInputs:
    """Derive inputs x from photos y with the task's rule, with masks and the photos that failed.

    Parameters
    ----------
    photos : ndarray, (N, S, S, 3) uint8
    task : TaskConfig
    progress : bool
        Show a progress bar (HED or the face mesh on many images take minutes).

    Returns
    -------
    DerivedInputs
        ``superres``: (N, S/f, S/f, 3). ``edges``: (N, S, S, 1), black strokes (0) on white (255).
        ``normals``: (N, S, S, 3) normal maps ``round((n + 1) / 2 * 255)`` (x right, y up, z toward
        the viewer) and the face masks; photos without a face are marked not usable.
    """
    photos = np.asarray(photos)
    if photos.ndim != 4 or photos.shape[-1] != 3 or photos.dtype != np.uint8:
        raise ValueError(f"photos must be (N, H, W, 3) uint8, got {photos.shape} {photos.dtype}")
    everyone = np.ones(len(photos), bool)
    if task.name == "superres":
        return DerivedInputs(area_downsample(photos, task.factor), None, everyone)
    if task.name == "edges":
        from pixelnn import edges

        if task.edge_method == "hed":
            return DerivedInputs(edges.hed_edge_maps(photos, progress=progress, scale=task.hed_scale,
                                                     autocast=task.hed_autocast), None, everyone)
        return DerivedInputs(edges.canny_edge_maps(photos), None, everyone)
    if task.name == "normals":
        from pixelnn.normals import normal_maps

        res = normal_maps(photos, progress=progress)
        return DerivedInputs(res.maps, res.masks, res.found)
    raise PixelNNError("task 'paired' takes its inputs from the data; they cannot be derived from a photo")


def derive_inputs(photos: np.ndarray, task: TaskConfig, progress: bool = False) -> np.ndarray:
    """Derive inputs x from photos y with the task's rule (see :func:`derive`).

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
        ``normals``: (N, S, S, 3) face normal maps.

    Raises
    ------
    PixelNNError
        ``normals``: no face was found in some photo.
    """
    res = derive(photos, task, progress=progress)
    if not res.usable.all():
        bad = int((~res.usable).sum())
        raise PixelNNError(f"no face found in {'the photo' if len(res.usable) == 1 else f'{bad} of {len(res.usable)} photos'}"
                           f" (the normals task needs an aligned face crop, e.g. CelebA's)")
    return res.inputs
