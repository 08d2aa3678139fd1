"""Windowed pixel matching between a query and K exemplars (paper section 3, "Efficient search").

For every query pixel i and every exemplar k, find the exemplar pixel j inside a T x T window
around i whose descriptor is most similar (cosine = dot product of unit vectors). All windows
are computed in one pass from the same similarity rows: a row of query pixel i against all
exemplar pixels is computed once, and each window just takes its max over a subset of it.
Windows are clipped *inward* at the borders (a 7x7 window at pixel (0, 0) covers [0, 7) x [0, 7)),
so the windows of one pixel nest: same pixel ⊂ 7x7 ⊂ 11x11 ⊂ whole image.

Plain functions on tensors:

- :func:`window_indices`: for each pixel, the flat indices of the pixels in its window;
- :func:`nested_offsets`: where a smaller window sits inside a larger one;
- :func:`match_windows`: best similarity and position per (exemplar, window, query pixel);
- :func:`match_windows_naive`: the same, pixel by pixel (reference for tests);
- :func:`select_sets`: combine per-exemplar matches into the matches of exemplar *sets*.

Shapes use P = H * W pixels, K exemplars, W windows, d descriptor dims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from pixelnn.errors import PixelNNError

#: The authors' windows: same pixel, 7x7, 11x11, whole image (None).
DEFAULT_WINDOWS: tuple[int | None, ...] = (1, 7, 11, None)


def default_exemplar_sets() -> list[tuple[int, ...]]:
    """The authors' 18 exemplar sets as 0-based neighbour ranks (they need K = 11 neighbours).

    Single exemplars at ranks 1..10; 3 consecutive ranks starting at 1, 3, 5, 7, 9; 5 consecutive
    ranks starting at 1, 4, 7 (1-based ranks in the authors' description).
    """
    singles = [(r,) for r in range(10)]
    triples = [tuple(range(s, s + 3)) for s in (0, 2, 4, 6, 8)]
    fives = [tuple(range(s, s + 5)) for s in (0, 3, 6)]
    return singles + triples + fives


@dataclass(frozen=True)
class OutputSpec:
    """One output: an exemplar set (0-based neighbour ranks) and a window (side, or None = whole image)."""

    ranks: tuple[int, ...]
    window: int | None

    @property
    def window_name(self) -> str:
        return "whole" if self.window is None else ("same pixel" if self.window == 1 else f"{self.window}x{self.window}")


def default_output_specs(sets: Sequence[Sequence[int]] | None = None,
                         windows: Sequence[int | None] = DEFAULT_WINDOWS) -> list[OutputSpec]:
    """Exemplar sets x windows: the authors' 18 x 4 = 72 outputs by default (set-major order)."""
    sets = default_exemplar_sets() if sets is None else sets
    return [OutputSpec(tuple(int(r) for r in s), w) for s in sets for w in windows]


def window_indices(height: int, width: int, window: int) -> torch.Tensor:
    """Flat pixel indices of each pixel's ``window x window`` neighbourhood, shifted inward at borders.

    Parameters
    ----------
    height, width : int
        Image size; P = height * width.
    window : int
        Odd or even side T, 1 <= T <= min(height, width).

    Returns
    -------
    Tensor, (P, T * T) int64
    """
    if not 1 <= window <= min(height, width):
        raise PixelNNError(f"window {window} must be between 1 and the image size {min(height, width)}")
    half = window // 2
    ys = torch.arange(height).clamp(half, height - window + half) - half  # (H,) top row of each window
    xs = torch.arange(width).clamp(half, width - window + half) - half  # (W,)
    off = torch.arange(window)
    rows = ys[:, None] + off[None, :]  # (H, T)
    cols = xs[:, None] + off[None, :]  # (W, T)
    idx = rows[:, None, :, None] * width + cols[None, :, None, :]  # (H, W, T, T)
    return idx.reshape(height * width, window * window)


def _argmax_rows(sims: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and first argmax over the last dim of (R, P), via block maxima.

    ``Tensor.max(dim)`` with indices is about 5x slower than ``amax`` on CPU; here only the
    (R, P / block) block maxima are computed over all of P, then the argmax is searched inside
    the winning block. Ties resolve to the lowest index, like ``max``.
    """
    r, p = sims.shape
    if p % block:
        return sims.max(dim=1)
    blocks = sims.view(r, p // block, block)
    block_max = blocks.amax(dim=2)  # (R, P/block)
    val, b = block_max.max(dim=1)  # (R,): best value and the first block holding it
    inside = blocks[torch.arange(r), b]  # (R, block): advanced indexing is ~2x faster than gather here
    off = inside.argmax(dim=1)  # first position of the max inside that block
    return val, b * block + off


def nested_offsets(height: int, width: int, outer: int, inner: int) -> torch.Tensor:
    """Where each pixel's ``inner`` window lies inside its ``outer`` window's index list.

    Windows nest (both are shifted inward at borders), so ``window_indices(h, w, inner)[i]`` equals
    ``window_indices(h, w, outer)[i][nested_offsets(h, w, outer, inner)[i]]``.

    Returns
    -------
    Tensor, (P, inner * inner) int64, values in [0, outer * outer)
    """
    if inner > outer:
        raise PixelNNError(f"inner window {inner} is larger than the outer window {outer}")
    big = window_indices(height, width, outer)  # (P, O*O)
    small = window_indices(height, width, inner)  # (P, I*I)
    dy = small // width - (big[:, :1] // width)  # (P, I*I): rows below the outer window's top
    dx = small % width - (big[:, :1] % width)
    return dy * outer + dx


def _check(query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int) -> None:
    if query.ndim != 2 or exemplars.ndim != 3:
        raise ValueError(f"query must be (P, d) and exemplars (K, P, d); got {tuple(query.shape)}, "
                         f"{tuple(exemplars.shape)}")
    if query.shape[0] != height * width or exemplars.shape[1] != height * width:
        raise ValueError(f"descriptors have {query.shape[0]} / {exemplars.shape[1]} pixels, expected {height * width}")
    if query.shape[1] != exemplars.shape[2]:
        raise ValueError(f"descriptor dims differ: {query.shape[1]} vs {exemplars.shape[2]}")


@torch.inference_mode()
def match_windows(query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
                  windows: Sequence[int | None] = DEFAULT_WINDOWS, chunk: int = 768
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best match of every query pixel in every exemplar, for every window, in one pass.

    For each block of ``chunk`` query pixels and each exemplar, one product gives the block's
    similarity rows against all the exemplar's pixels; every window then takes its maximum from
    those rows while they are still in the CPU cache (a 768 x 9216 block is 28 MB): the whole
    image by block maxima, the largest finite window by one gather, and the smaller windows, which
    nest inside it, from that gather.

    Parameters
    ----------
    query : Tensor, (P, d)
        Unit-norm descriptors of the query's pixels.
    exemplars : Tensor, (K, P, d)
        Unit-norm descriptors of the K exemplars' pixels.
    height, width : int
        Pixel grid, P = height * width.
    windows : sequence of int or None
        Window sides; None means the whole image.
    chunk : int
        Query pixels per block (bounds memory to chunk * P floats).

    Returns
    -------
    best_sim : Tensor, (K, W, P) float32
        Highest cosine similarity inside each window.
    best_pos : Tensor, (K, W, P) int64
        Flat exemplar pixel index j achieving it (ties: the lowest index).
    """
    _check(query, exemplars, height, width)
    k, p, d = exemplars.shape
    query = query.float()
    ex_t = [exemplars[e].float().T.contiguous() for e in range(k)]  # K x (d, P)
    sides = sorted({w for w in windows if w is not None})
    outer = sides[-1] if sides else None
    outer_idx = window_indices(height, width, outer) if outer else None  # (P, O*O)
    inner = {w: nested_offsets(height, width, outer, w) for w in sides if w != outer}  # (P, I*I) each
    best_sim = torch.empty(k, len(windows), p, dtype=torch.float32)
    best_pos = torch.empty(k, len(windows), p, dtype=torch.int64)
    buf = torch.empty(min(chunk, p), p, dtype=torch.float32)  # reused: a fresh block per product costs as much
    for start in range(0, p, chunk):
        stop = min(start + chunk, p)
        q = query[start:stop]  # (R, d)
        cand = outer_idx[start:stop] if outer else None  # (R, O*O)
        for e in range(k):
            sims = torch.mm(q, ex_t[e], out=buf[:stop - start])  # (R, P)
            vals = sims.gather(1, cand) if outer else None  # (R, O*O)
            for w, side in enumerate(windows):
                if side is None:  # whole image
                    val, pos = _argmax_rows(sims, width)  # (R,)
                elif side == outer:
                    val, arg = vals.max(dim=1)
                    pos = cand.gather(1, arg[:, None]).squeeze(1)
                else:
                    off = inner[side][start:stop]  # (R, I*I) positions inside the outer window
                    val, arg = vals.gather(1, off).max(dim=1)
                    pos = cand.gather(1, off.gather(1, arg[:, None])).squeeze(1)
                best_sim[e, w, start:stop] = val
                best_pos[e, w, start:stop] = pos
    return best_sim, best_pos


def match_windows_naive(query: np.ndarray, exemplars: np.ndarray, height: int, width: int,
                        windows: Sequence[int | None] = DEFAULT_WINDOWS) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation of :func:`match_windows`: explicit loops over pixels and windows.

    Slow (use only on small images). Ties resolve to the lowest flat index, as in the fast path.
    """
    query, exemplars = np.asarray(query, np.float32), np.asarray(exemplars, np.float32)
    k, p, _ = exemplars.shape
    best_sim = np.empty((k, len(windows), p), np.float32)
    best_pos = np.empty((k, len(windows), p), np.int64)
    for e in range(k):
        for i in range(p):
            y, x = divmod(i, width)
            row = exemplars[e] @ query[i]  # (P,)
            for w, win in enumerate(windows):
                if win is None:
                    cand = np.arange(p)
                else:
                    y0 = min(max(y - win // 2, 0), height - win)
                    x0 = min(max(x - win // 2, 0), width - win)
                    cand = np.array([yy * width + xx for yy in range(y0, y0 + win) for xx in range(x0, x0 + win)])
                j = cand[np.argmax(row[cand])]
                best_sim[e, w, i], best_pos[e, w, i] = row[j], j
    return best_sim, best_pos


def select_sets(best_sim: torch.Tensor, best_pos: torch.Tensor, specs: Sequence[OutputSpec],
                windows: Sequence[int | None] = DEFAULT_WINDOWS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Matches for each output: per pixel, the set member whose best window match is most similar.

    Parameters
    ----------
    best_sim, best_pos : Tensor, (K, W, P)
        From :func:`match_windows`.
    specs : sequence of OutputSpec
        Output definitions; ranks index the K exemplars.
    windows : sequence
        The windows ``best_sim`` was computed for (to find each spec's window).

    Returns
    -------
    rank : Tensor, (O, P) int64
        Chosen neighbour rank (index into the K exemplars) per output pixel.
    pos : Tensor, (O, P) int64
        Matched flat pixel index in that exemplar.
    sim : Tensor, (O, P) float32
        Its cosine similarity.
    """
    k = best_sim.shape[0]
    win_of = {w: i for i, w in enumerate(windows)}
    for spec in specs:
        if spec.window not in win_of:
            raise PixelNNError(f"window {spec.window} was not matched; matched windows: {list(windows)}")
        if any(not 0 <= r < k for r in spec.ranks):
            raise PixelNNError(f"exemplar set {spec.ranks} needs {max(spec.ranks) + 1} neighbours, only {k} available")
    if not specs:
        p = best_sim.shape[2]
        return torch.empty(0, p, dtype=torch.int64), torch.empty(0, p, dtype=torch.int64), torch.empty(0, p)
    n = max(len(s.ranks) for s in specs)
    # Pad every set to n members by repeating its last one: a repeat never wins, since ties go to
    # the first member holding the maximum.
    members = torch.tensor([list(s.ranks) + [s.ranks[-1]] * (n - len(s.ranks)) for s in specs])  # (O, n)
    win = torch.tensor([win_of[s.window] for s in specs])[:, None].expand(-1, n)  # (O, n)
    sims = best_sim[members, win]  # (O, n, P)
    arg = sims.argmax(dim=1, keepdim=True)  # (O, 1, P): first member with the best match
    rank = members[:, :, None].expand_as(sims).gather(1, arg).squeeze(1)  # (O, P)
    pos = best_pos[members, win].gather(1, arg).squeeze(1)
    sim = sims.gather(1, arg).squeeze(1)
    return rank, pos, sim
