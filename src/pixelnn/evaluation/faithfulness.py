"""Faithfulness to the input: re-derive the input from an output and compare it with the given input.

- ``superres``: area-downsample the output by the task's factor (:func:`pixelnn.tasks.area_downsample`,
  the rule that made the inputs) and take the PSNR to the input thumbnail.
- ``edges`` (and ``paired`` inputs that are edge maps): detect edges in the output with the method
  and scale that made the dataset (HED: fused probabilities with the same ``hed_scale``, then the
  same non-maximum suppression as pix2pix's post-processing, which leaves a thin edge-strength map;
  Canny: its binary map) and score that map against the input's strokes.

Edge protocol (pixel-wise, with a distance tolerance, per image): for each threshold t of a
99-step grid over (0, 1) (plus every distinct score for binary maps), the predicted edges are the
pixels with strength >= t. Precision is the fraction of predicted pixels within ``tolerance``
pixels (Euclidean) of an input edge pixel; recall is the fraction of input edge pixels within
``tolerance`` of a predicted pixel. This is a relaxed version of the BSDS benchmark (no one-to-one
matching). Average precision is ``sum_i (R_i - R_{i-1}) P_i`` over thresholds in decreasing order
(R_0 = 0, precision of an empty prediction = 1); best F1 is the maximum of ``2PR / (P + R)`` over the
thresholds (per image: OIS). Images without input edges give NaN.
"""

from __future__ import annotations

import numpy as np

from pixelnn.config import TaskConfig
from pixelnn.evaluation.image_metrics import psnr
from pixelnn.tasks import area_downsample

THRESHOLDS = np.linspace(0.01, 0.99, 99)


def superres_faithfulness(outputs: np.ndarray, inputs: np.ndarray, factor: int) -> np.ndarray:
    """PSNR (dB) between area-downsampled outputs (N, S, S, 3) and their inputs (N, S/f, S/f, 3) uint8."""
    outputs, inputs = np.asarray(outputs), np.asarray(inputs)
    small = area_downsample(outputs, factor)
    if small.shape != inputs.shape:
        raise ValueError(f"downsampled outputs {small.shape} do not match the inputs {inputs.shape}")
    return psnr(small, inputs)


def input_edges(inputs: np.ndarray) -> np.ndarray:
    """Edge pixels of stroke maps (N, H, W, C) uint8 (dark strokes on white) -> (N, H, W) bool."""
    x = np.asarray(inputs, np.float32)
    if x.ndim == 3:
        x = x[..., None]
    gray = x[..., :3].mean(axis=-1) if x.shape[-1] >= 3 else x[..., 0]
    return gray < 128


def looks_like_edge_map(inputs: np.ndarray) -> bool:
    """True when inputs (N, H, W, C) uint8 are near-binary dark strokes on white (e.g. pix2pix's edges2*)."""
    x = np.asarray(inputs, np.float32)
    gray = x[..., :3].mean(axis=-1) if x.shape[-1] >= 3 else x[..., 0]
    near_binary = ((gray < 64) | (gray > 192)).mean()
    return bool(near_binary > 0.95 and (gray > 192).mean() > 0.6)


def edge_strength(outputs: np.ndarray, task: TaskConfig, batch_size: int = 16, progress: bool = False,
                  device: str = "cpu") -> np.ndarray:
    """Edge strength of outputs (N, S, S, 3) uint8 -> (N, S, S) float in [0, 1], the way the task made its inputs.

    HED (``task.edge_method == "hed"``, run on ``device``): fused probabilities at ``task.hed_scale`` (and
    ``task.hed_autocast``), then
    pix2pix's non-maximum suppression (thin ridges keep their strength). Canny: the binary map as 0/1.
    """
    from pixelnn import edges

    if task.edge_method == "canny":
        return (edges.canny_edge_maps(outputs)[..., 0] == 0).astype(np.float32)
    prob = edges.hed_probability(outputs, batch_size=batch_size, progress=progress, device=device,
                                 scale=task.hed_scale, autocast=task.hed_autocast)
    if prob.shape[1] < 3 or prob.shape[2] < 3:
        return prob
    return edges.edge_nms(prob, edges.edge_orientation(prob, 4), radius=1, border=5).astype(np.float32)


def _disk(radius: float) -> np.ndarray:
    r = int(np.floor(radius))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy ** 2 + xx ** 2) <= radius ** 2


def edge_precision_recall(score: np.ndarray, truth: np.ndarray, tolerance: float = 1.0,
                          thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall of one edge-strength map against true edges, over thresholds.

    Parameters
    ----------
    score : ndarray, (H, W) float
        Edge strength in [0, 1].
    truth : ndarray, (H, W) bool
        True edge pixels.
    tolerance : float
        Match distance in pixels (0: exact positions).
    thresholds : ndarray, optional
        Increasing thresholds; default :data:`THRESHOLDS` plus the distinct nonzero scores when there
        are at most 99 of them (binary maps are scored exactly).

    Returns
    -------
    thresholds, precision, recall : ndarray, (T,) each
        Precision is 1 where nothing is predicted; recall is NaN when ``truth`` is empty.
    """
    score = np.asarray(score, np.float64)
    truth = np.asarray(truth, bool)
    if score.shape != truth.shape or score.ndim != 2:
        raise ValueError(f"score and truth must be (H, W) of one shape, got {score.shape} and {truth.shape}")
    if thresholds is None:
        distinct = np.unique(score[score > 0])
        thresholds = np.union1d(THRESHOLDS, distinct) if len(distinct) <= 99 else THRESHOLDS
    thresholds = np.asarray(thresholds, np.float64)
    # Precision: a predicted pixel counts when an input edge lies within the tolerance.
    from scipy import ndimage  # here, not at import: 0.25 s of start-up that superres and normals ranking never need

    if truth.any():
        near_truth = ndimage.distance_transform_edt(~truth) <= tolerance
    else:
        near_truth = np.zeros_like(truth)
    # Recall: an input edge pixel counts at t when some pixel within the tolerance has strength >= t.
    best_near = ndimage.maximum_filter(score, footprint=_disk(tolerance), mode="constant", cval=0.0)
    s_all = np.sort(score.ravel())
    s_near = np.sort(score[near_truth])
    s_gt = np.sort(best_near[truth])
    n_pred = len(s_all) - np.searchsorted(s_all, thresholds, side="left")
    tp = len(s_near) - np.searchsorted(s_near, thresholds, side="left")
    hit = len(s_gt) - np.searchsorted(s_gt, thresholds, side="left")
    precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 1.0)
    recall = hit / len(s_gt) if len(s_gt) else np.full(len(thresholds), np.nan)
    return thresholds, precision, recall


def average_precision_f1(precision: np.ndarray, recall: np.ndarray) -> tuple[float, float]:
    """(average precision, best F1) from precision/recall at increasing thresholds; see the module protocol."""
    p, r = np.asarray(precision)[::-1], np.asarray(recall)[::-1]  # decreasing threshold: recall grows
    if np.isnan(r).any():
        return float("nan"), float("nan")
    ap = float(np.sum(np.diff(np.concatenate([[0.0], r])) * p))
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-12), 0.0)
    return ap, float(f1.max())


def edge_faithfulness(scores: np.ndarray, truth: np.ndarray, tolerance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image average precision and best F1 of edge strengths (N, H, W) against true edges (N, H, W) bool."""
    scores, truth = np.asarray(scores), np.asarray(truth)
    if scores.shape != truth.shape:
        raise ValueError(f"scores {scores.shape} and truth {truth.shape} differ in shape")
    res = [average_precision_f1(*edge_precision_recall(s, t, tolerance)[1:]) for s, t in zip(scores, truth)]
    res = np.array(res, np.float64).reshape(-1, 2)
    return res[:, 0], res[:, 1]
