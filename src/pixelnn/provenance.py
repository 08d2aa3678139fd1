"""Where output pixels came from: per-output exemplar shares and per-pixel sources.

Plain functions over a :class:`~pixelnn.pipeline.SynthesisResult`'s correspondence arrays, used by
the web app (``pixelnn serve``) and usable from Python:

>>> shares = top_contributors(result, 0, pipe.library, n=3)    # doctest: +SKIP
>>> shares[0].exemplar_id, round(shares[0].share, 2)           # doctest: +SKIP
('shoe-0412', 0.61)
>>> pixel_source(result, 0, y=40, x=12, library=pipe.library)  # doctest: +SKIP
PixelSource(output=0, y=40, x=12, library_position=412, exemplar_id='shoe-0412', rank=0, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pixelnn.errors import PixelNNError


def exemplar_ranks(exemplar: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Neighbour rank of every library position in ``exemplar``.

    Parameters
    ----------
    exemplar : ndarray, (...) int
        Library positions (e.g. ``result.exemplar``, (O, S, S)).
    neighbours : ndarray, (K,) int
        Library positions of the retrieved neighbours in rank order.

    Returns
    -------
    ndarray, (...) int64
        0-based rank of each position in ``neighbours``.

    Raises
    ------
    ValueError
        If a position is not among the neighbours.
    """
    exemplar = np.asarray(exemplar)
    neighbours = np.asarray(neighbours, np.int64)
    order = np.argsort(neighbours, kind="stable")
    where = np.searchsorted(neighbours, exemplar, sorter=order)
    where = np.clip(where, 0, len(neighbours) - 1)
    ranks = order[where]
    if exemplar.size and not np.array_equal(neighbours[ranks], exemplar):
        raise ValueError("some positions are not among the neighbours")
    return ranks.astype(np.int64)


def pixel_shares(exemplar: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How many pixels of one output each source exemplar supplied, most first.

    Parameters
    ----------
    exemplar : ndarray, (H, W) int
        Library position each output pixel was copied from.

    Returns
    -------
    positions : ndarray, (M,) int64
        Distinct library positions, by pixel count descending (ties: lower position first).
    counts : ndarray, (M,) int64
        Pixels taken from each.
    shares : ndarray, (M,) float64
        ``counts / (H * W)``; sums to 1.
    """
    positions, counts = np.unique(np.asarray(exemplar, np.int64).ravel(), return_counts=True)
    order = np.lexsort((positions, -counts))
    positions, counts = positions[order], counts[order]
    return positions, counts, counts / max(int(counts.sum()), 1)


@dataclass(frozen=True)
class Contribution:
    """One exemplar's part in one output.

    Attributes
    ----------
    rank : int
        0-based neighbour rank (global retrieval order).
    library_position, exemplar_id : int, str
        Which exemplar.
    pixels : int
        Output pixels copied from it.
    share : float
        ``pixels`` over all output pixels.
    labels : dict
        The exemplar's labels (e.g. ``{"Subcategory": "Sneakers"}``).
    source : str or None
        The file it was prepared from.
    """

    rank: int
    library_position: int
    exemplar_id: str
    pixels: int
    share: float
    labels: dict[str, Any] = field(default_factory=dict)
    source: str | None = None


def _check_output(result: Any, output: int) -> int:
    n = len(result.outputs)
    if not 0 <= int(output) < n:
        raise PixelNNError(f"output {output} does not exist; this result has outputs 0..{n - 1}")
    return int(output)


def _record(library: Any, position: int) -> dict[str, Any]:
    if library is None:
        return {}
    return library.records_of([int(position)])[0]


def top_contributors(result: Any, output: int, library: Any = None, n: int | None = None) -> list[Contribution]:
    """The exemplars that supplied output ``output``'s pixels, largest share first.

    Parameters
    ----------
    result : SynthesisResult
        A pipeline result.
    output : int
        0-based output index.
    library : ExemplarLibrary, optional
        For labels and sources (left empty without it).
    n : int, optional
        Keep only the first ``n``.

    Returns
    -------
    list of Contribution
    """
    output = _check_output(result, output)
    positions, counts, shares = pixel_shares(result.exemplar[output])
    ranks = exemplar_ranks(positions, result.neighbours)
    out = []
    for pos, cnt, share, rank in zip(positions[:n], counts[:n], shares[:n], ranks[:n]):
        rec = _record(library, pos)
        out.append(Contribution(rank=int(rank), library_position=int(pos), exemplar_id=result.neighbour_ids[int(rank)],
                                pixels=int(cnt), share=float(share), labels=dict(rec.get("labels") or {}),
                                source=rec.get("source")))
    return out


@dataclass(frozen=True)
class PixelSource:
    """Where one output pixel came from.

    Attributes
    ----------
    output, y, x : int
        The output pixel (0-based output index, row, column).
    library_position, exemplar_id, rank : int, str, int
        The source exemplar and its 0-based neighbour rank.
    source_y, source_x : int
        The pixel of that exemplar's photo it was copied from.
    similarity : float
        Cosine similarity of the two pixels' descriptors.
    labels : dict
        The exemplar's labels (empty without a library).
    """

    output: int
    y: int
    x: int
    library_position: int
    exemplar_id: str
    rank: int
    source_y: int
    source_x: int
    similarity: float
    labels: dict[str, Any] = field(default_factory=dict)


def pixel_source(result: Any, output: int, y: int, x: int, library: Any = None) -> PixelSource:
    """Source exemplar and position of pixel (``y``, ``x``) of output ``output``.

    Out-of-range outputs or pixels raise a one-line :class:`PixelNNError`.
    """
    output = _check_output(result, output)
    h, w = result.exemplar.shape[1:]
    if not (0 <= int(y) < h and 0 <= int(x) < w):
        raise PixelNNError(f"pixel (y={y}, x={x}) is outside the {w}x{h} output")
    y, x = int(y), int(x)
    pos = int(result.exemplar[output, y, x])
    rank = int(exemplar_ranks(np.array([pos]), result.neighbours)[0])
    return PixelSource(output=output, y=y, x=x, library_position=pos, exemplar_id=result.neighbour_ids[rank],
                       rank=rank, source_y=int(result.source_y[output, y, x]),
                       source_x=int(result.source_x[output, y, x]),
                       similarity=float(result.similarity[output, y, x]),
                       labels=dict(_record(library, pos).get("labels") or {}))


def format_labels(labels: dict[str, Any]) -> str:
    """``{"Category": "Shoes", "Subcategory": "Boots"}`` -> ``"Category=Shoes, Subcategory=Boots"`` (or ``"no labels"``)."""
    return ", ".join(f"{k}={v}" for k, v in labels.items()) or "no labels"
