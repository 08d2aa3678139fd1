"""Ranked outputs (issue 16): a score per output, re-derived from the output, and the order best first.

The paper admits that "we do not have any direct way of ranking the outputs". A PixelNN output can
be checked against its input, though: re-derive the input from the output with the task's own rule
and compare it with the input given. That agreement is the output's **faithfulness**
(:func:`output_scores`, higher is better), from the faithfulness metrics of
:mod:`pixelnn.evaluation.faithfulness` and :mod:`pixelnn.evaluation.angular`:

- ``superres`` (:data:`SCORE_KINDS` ``"psnr"``): PSNR (dB) of the output area-downsampled by the
  task's factor against the input thumbnail (:func:`~pixelnn.evaluation.faithfulness.superres_faithfulness`),
  capped at :data:`MAX_PSNR` (an exact re-derivation is +inf);
- ``edges``, and ``paired`` inputs that look like edge maps (``"edge_ap"``): average precision of
  the output's edges (the task's edge method, HED at its ``hed_scale`` with pix2pix's thinning,
  :func:`~pixelnn.evaluation.faithfulness.edge_strength`) against the input's strokes
  (:func:`~pixelnn.evaluation.faithfulness.input_edges`), 1-pixel tolerance
  (:func:`~pixelnn.evaluation.faithfulness.edge_faithfulness`);
- ``normals`` (``"normal_angle"``): minus the mean angle (degrees) between the normals the face mesh
  estimates from the output and the input normal map, at the input's face-mask pixels where both
  are defined (:func:`~pixelnn.evaluation.angular.score_outputs`); an output in which no face is
  found gets NaN.

Other inputs (``paired`` inputs that are not edge maps) have no faithfulness: every value is NaN.
The score the outputs are ranked by (:func:`rank_scores`) adds the outputs' mean match similarity to
the faithfulness, each standardized over the input's outputs (similarity alone where there is no
faithfulness). Sorting (:func:`score_order`) is stable and puts NaN last, so ties keep the grid order
(sets x windows).

Cost per input of 72 outputs of 96x96 (2 cores, docs/results.md, beside 1.9 s of synthesis): superres
0.02 s; edges one HED pass per output, 2.6 s at ``hed_scale`` 1 and 11.4 s at 2; normals one face-mesh
pass per output, 1.3 s. ``SynthesisOptions(order="grid")`` skips the scoring.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pixelnn.config import TaskConfig

log = logging.getLogger(__name__)

#: What a score measures, by :func:`score_kind`: superres PSNR (dB), edge average precision, minus the
#: mean normal angle (degrees).
SCORE_KINDS = ("psnr", "edge_ap", "normal_angle")
#: Cap of the superres score (dB): an output that re-derives the input exactly scores this, not +inf.
MAX_PSNR = 100.0
#: Outputs per HED forward pass when scoring edges (8 measured 5-10% faster than 24 or 72 on 2 cores).
EDGE_BATCH = 8
#: Distance (pixels) within which an output edge counts as on an input stroke.
EDGE_TOLERANCE = 1.0
#: What the outputs are ranked by (:func:`rank_scores`), for manifests.
RANKING = ("z(faithfulness) + z(mean match similarity), each standardized over the input's outputs; "
           "similarity alone for a task without a faithfulness score")
#: One line per kind, for manifests and docs: what the faithfulness score is.
DESCRIPTIONS = {
    "psnr": "PSNR (dB) of the output area-downsampled by the task's factor against the input thumbnail",
    "edge_ap": "average precision of the output's edges (the task's edge method and scale) against the input "
               "strokes, 1-px tolerance",
    "normal_angle": "minus the mean angle (degrees) between the face-mesh normals of the output and the input "
                    "normal map, inside the input's face mask",
}


def score_kind(task: TaskConfig, x: np.ndarray | None = None) -> str | None:
    """What the outputs of ``task`` for input ``x`` are scored by: one of :data:`SCORE_KINDS`, or None.

    Parameters
    ----------
    task : TaskConfig
    x : ndarray, (s, s, C) uint8, optional
        The input; a ``paired`` task's input is scored as an edge map when it looks like one
        (:func:`~pixelnn.evaluation.faithfulness.looks_like_edge_map`). Without it, ``paired`` has no score.

    Returns
    -------
    str or None
        ``"psnr"`` (superres), ``"edge_ap"`` (edges, edge-map paired inputs), ``"normal_angle"`` (normals), None.
    """
    from pixelnn.evaluation.faithfulness import looks_like_edge_map

    if task.name == "superres":
        return "psnr"
    if task.name == "edges":
        return "edge_ap"
    if task.name == "normals":
        return "normal_angle"
    if x is not None and looks_like_edge_map(np.asarray(x)[None]):
        return "edge_ap"
    return None


def superres_scores(outputs: np.ndarray, x: np.ndarray, factor: int) -> np.ndarray:
    """PSNR (dB) of each output area-downsampled by ``factor`` against the thumbnail.

    Parameters
    ----------
    outputs : ndarray, (O, S, S, 3) uint8
    x : ndarray, (S/f, S/f, 3) uint8
        The input thumbnail.
    factor : int
        The task's downsampling factor f.

    Returns
    -------
    ndarray, (O,) float64
        In dB, at most :data:`MAX_PSNR`.
    """
    from pixelnn.evaluation.faithfulness import superres_faithfulness

    outputs, x = np.asarray(outputs), np.asarray(x)
    ps = superres_faithfulness(outputs, np.broadcast_to(x, (len(outputs), *x.shape)), factor)
    return np.minimum(np.asarray(ps, np.float64), MAX_PSNR)


def edge_scores(outputs: np.ndarray, x: np.ndarray, task: TaskConfig, tolerance: float = EDGE_TOLERANCE,
                batch_size: int = EDGE_BATCH, device: Any = "cpu") -> np.ndarray:
    """Average precision of each output's edges against the input's strokes.

    Parameters
    ----------
    outputs : ndarray, (O, S, S, 3) uint8
    x : ndarray, (S, S, C) uint8
        The edge map: dark strokes on white.
    task : TaskConfig
        Its ``edge_method`` and ``hed_scale`` detect the outputs' edges as the inputs were made.
    tolerance : float
        Match distance in pixels.
    batch_size : int
        Outputs per HED forward pass.
    device : str or torch.device
        Where HED runs.

    Returns
    -------
    ndarray, (O,) float64
        In [0, 1]; all NaN when the input has no stroke, or is not the outputs' size.
    """
    from pixelnn.evaluation.faithfulness import edge_faithfulness, edge_strength, input_edges

    outputs, x = np.asarray(outputs), np.asarray(x)
    truth = input_edges(x[None])[0]  # (S, S) bool
    if truth.shape != outputs.shape[1:3] or not truth.any():
        log.debug("no edge score: the input's strokes are %s (outputs %s), %d pixels", truth.shape,
                  outputs.shape[1:3], int(truth.sum()))
        return np.full(len(outputs), np.nan)
    strength = edge_strength(outputs, task, batch_size=batch_size, device=str(device))  # (O, S, S)
    ap, _ = edge_faithfulness(strength, np.broadcast_to(truth, strength.shape), tolerance)
    return np.asarray(ap, np.float64)


def normal_scores(outputs: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Minus the mean angle (degrees) between each output's face-mesh normals and the input normal map.

    Parameters
    ----------
    outputs : ndarray, (O, S, S, 3) uint8
        Face images.
    x : ndarray, (S, S, 3) uint8
        The input normal map (:func:`pixelnn.normals.encode_normals`; :data:`~pixelnn.normals.BACKGROUND`
        outside the face mask).

    Returns
    -------
    ndarray, (O,) float64
        In [-180, 0]; NaN for an output in which the face mesh finds no face (or no scored pixel).
    """
    from pixelnn.evaluation.angular import defined, estimate_face_normals, score_outputs
    from pixelnn.normals import decode_normals

    truth = decode_normals(np.asarray(x))  # (S, S, 3), 0 outside the mask
    errors = score_outputs(estimate_face_normals(np.asarray(outputs)), truth, defined(truth))
    return np.array([-float(e.mean()) if e is not None and e.size else np.nan for e in errors], np.float64)


def output_scores(outputs: np.ndarray, x: np.ndarray, task: TaskConfig, device: Any = "cpu") -> np.ndarray:
    """Every output's faithfulness to the input, re-derived from the output (higher is better).

    Parameters
    ----------
    outputs : ndarray, (O, S, S, 3) uint8
    x : ndarray, (s, s, C) uint8
        The input the outputs were synthesized from.
    task : TaskConfig
        How inputs are derived from photos (:func:`score_kind` picks the score).
    device : str or torch.device
        Where HED runs (edge scores).

    Returns
    -------
    ndarray, (O,) float64
        :func:`superres_scores`, :func:`edge_scores` or :func:`normal_scores`; all NaN for a task
        without a score (:func:`score_kind` None).
    """
    outputs = np.asarray(outputs)
    kind = score_kind(task, x)
    if len(outputs) == 0 or kind is None:
        return np.full(len(outputs), np.nan)
    if kind == "psnr":
        return superres_scores(outputs, x, task.factor)
    if kind == "edge_ap":
        return edge_scores(outputs, x, task, device=device)
    return normal_scores(outputs, x)


def mean_similarity(similarity: np.ndarray) -> np.ndarray:
    """Every output's mean match similarity: (O, S, S) cosine similarities of its pixels' matches -> (O,) float64."""
    sim = np.asarray(similarity, np.float64)
    return sim.reshape(len(sim), -1).mean(axis=1) if len(sim) else np.zeros(0)


def _z(a: np.ndarray) -> np.ndarray:
    """Standard scores over the finite entries of ``a`` (NaN stays NaN; a constant gives 0)."""
    a = np.asarray(a, np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.full(a.shape, np.nan)
    mu, sd = a[finite].mean(), a[finite].std()
    return np.where(finite, (a - mu) / sd if sd > 0 else 0.0, np.nan)


def rank_scores(faithfulness: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """The score the outputs are ranked by: ``z(faithfulness) + z(mean match similarity)`` over one input's outputs.

    Faithfulness alone (the re-derived input) ranks by low frequencies only: on 12x12 shoes its first
    output was no better by LPIPS than a random one (50 val inputs, docs/results.md), nearly always a
    1x1-window output. The mean similarity of an output's matches measures how well its copied pixels
    fit the stage-1 image; the two together ranked a first output 0.021 LPIPS better than the mean output.

    Parameters
    ----------
    faithfulness : ndarray, (O,) float
        :func:`output_scores`; NaN for an output that could not be scored (it is ranked last), or all
        NaN for a task without a faithfulness score (the outputs are then ranked by similarity alone).
    similarity : ndarray, (O, S, S) float
        The outputs' match similarities (``SynthesisResult.similarity``).

    Returns
    -------
    ndarray, (O,) float64
        Higher is better; NaN where the output's faithfulness is NaN (and the task has one).
    """
    f = np.asarray(faithfulness, np.float64)
    zs = _z(mean_similarity(similarity))
    if not np.isfinite(f).any():
        return zs
    return _z(f) + zs


def score_order(scores: np.ndarray) -> np.ndarray:
    """The outputs best first: a stable sort by descending score, NaN last.

    Parameters
    ----------
    scores : ndarray, (O,) float

    Returns
    -------
    ndarray, (O,) int64
        A permutation: ``order[0]`` is the best output. Ties (and NaN scores) keep their given order.
    """
    s = np.asarray(scores, np.float64)
    missing = np.isnan(s)
    return np.lexsort((np.where(missing, 0.0, -s), missing)).astype(np.int64)  # lexsort is stable


def score_text(score: float, kind: str | None) -> str:
    """A score for a caption: ``31.2 dB``, ``AP 0.62``, ``12.3° off``; empty for NaN or no kind."""
    if kind is None or score is None or not np.isfinite(score):
        return ""
    if kind == "psnr":
        return f"{score:.1f} dB"
    if kind == "edge_ap":
        return f"AP {score:.2f}"
    return f"{-score:.1f}° off"
