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

from pixelnn.config import DEFAULT_WINDOWS
from pixelnn.errors import PixelNNError


#: Side of the patch similarity of coherent matching (:func:`coherent_matches`).
DEFAULT_PATCH_SIZE = 11


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
    inside = blocks[torch.arange(r, device=sims.device), b]  # (R, block): advanced indexing is ~2x faster than gather here
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


def _similarity_blocks(query: torch.Tensor, exemplars: torch.Tensor, chunk: int):
    """Yield ``(start, stop, e, sims)``: the similarities (R, P) of query rows [start, stop) (of Q, the query's
    pixels or a subset of them) against every pixel of exemplar e, block by block. ``sims`` is one reused
    buffer, valid until the next item."""
    k, p, _ = exemplars.shape
    q = query.shape[0]
    query = query.float()
    ex_t = [exemplars[e].float().T.contiguous() for e in range(k)]  # K x (d, P)
    buf = torch.empty(min(chunk, q), p, dtype=torch.float32, device=query.device)  # reused: a fresh one costs as much
    for start in range(0, q, chunk):
        stop = min(start + chunk, q)
        for e in range(k):
            yield start, stop, e, torch.mm(query[start:stop], ex_t[e], out=buf[:stop - start])  # (R, P)


@torch.inference_mode()
def match_windows(query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
                  windows: Sequence[int | None] = DEFAULT_WINDOWS, chunk: int = 768,
                  pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Best match of every query pixel in every exemplar, for every window, in one pass.

    For each block of ``chunk`` query pixels and each exemplar, one product gives the block's
    similarity rows against all the exemplar's pixels; every window then takes its maximum from
    those rows while they are still in the CPU cache (a 768 x 9216 block is 28 MB): the whole
    image by block maxima, the largest finite window by one gather, and the smaller windows, which
    nest inside it, from that gather. Runs on the device of ``query`` (CPU or GPU): the results are
    the same up to ties between equally similar pixels.

    Parameters
    ----------
    query : Tensor, (P, d)
        Unit-norm descriptors of the query's pixels.
    exemplars : Tensor, (K, P, d)
        Unit-norm descriptors of the K exemplars' pixels (same device).
    height, width : int
        Pixel grid, P = height * width.
    windows : sequence of int or None
        Window sides; None means the whole image.
    chunk : int
        Query pixels per block (bounds memory to chunk * P floats).
    pixels : Tensor, (Q,) int64, optional
        Match only these query pixels (flat indices), e.g. one region's (:mod:`pixelnn.regions`); the
        cost is then Q / P of a full pass. None: every pixel, Q = P.

    Returns
    -------
    best_sim : Tensor, (K, W, Q) float32
        Highest cosine similarity inside each window.
    best_pos : Tensor, (K, W, Q) int64
        Flat exemplar pixel index j achieving it (ties: the lowest index).
    """
    _check(query, exemplars, height, width)
    k, _, d = exemplars.shape
    dev = query.device
    sides = sorted({w for w in windows if w is not None})
    outer = sides[-1] if sides else None
    outer_idx = window_indices(height, width, outer).to(dev) if outer else None  # (P, O*O)
    inner = {w: nested_offsets(height, width, outer, w).to(dev) for w in sides if w != outer}  # (P, I*I) each
    if pixels is not None:  # only these query pixels: their rows of the query and of the window tables
        pixels = torch.as_tensor(pixels, dtype=torch.int64, device=dev)
        query = query[pixels]  # (Q, d)
        outer_idx = outer_idx[pixels] if outer else None  # (Q, O*O)
        inner = {w: off[pixels] for w, off in inner.items()}  # (Q, I*I) each
    p = query.shape[0]
    best_sim = torch.empty(k, len(windows), p, dtype=torch.float32, device=dev)
    best_pos = torch.empty(k, len(windows), p, dtype=torch.int64, device=dev)
    for start, stop, e, sims in _similarity_blocks(query, exemplars, chunk):
        cand = outer_idx[start:stop] if outer else None  # (R, O*O)
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


def grid_pixels(height: int, width: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and columns of the query pixels coherent matching labels at ``stride`` (:func:`coherent_matches`).

    Stride s keeps pixel ``s // 2`` of every s x s block, so full-resolution pixel (y, x) is represented by grid
    pixel (y // s, x // s), at most s // 2 pixels away; stride 1 keeps every pixel.

    Returns
    -------
    rows : Tensor, (H_s,) int64, H_s = ceil(H / s)
    cols : Tensor, (W_s,) int64
    """
    if stride < 1:
        raise PixelNNError(f"stride must be >= 1, got {stride}")
    return (torch.arange(height // stride + (height % stride > 0)) * stride + stride // 2).clamp(max=height - 1), \
        (torch.arange(width // stride + (width % stride > 0)) * stride + stride // 2).clamp(max=width - 1)


@torch.inference_mode()
def window_similarities(query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int, window: int,
                        tile: int = 8, stride: int = 1) -> torch.Tensor:
    """Every similarity inside each pixel's ``window x window`` window, for :func:`coherent_matches`.

    Only the similarities the windows hold are computed: the query is cut into ``tile`` x ``tile`` blocks of
    pixels, and each block is multiplied against the exemplar pixels of the rectangle its windows cover
    (``tile + window - 1`` on a side, less at the borders), all K exemplars in one product. That costs about
    ``(tile + window - 1)^2 / P`` of whole-image search (0.035 at 96x96 with an 11x11 window and 8x8 tiles;
    measured 0.10 s for K = 11, d = 64 on 2 cores, against 1.0 s for the whole-image products it replaced,
    with bit-identical values).

    Parameters
    ----------
    query : Tensor, (P, d)
    exemplars : Tensor, (K, P, d)
    height, width : int
    window : int
        Side T of the window (:func:`window_indices`).
    tile : int
        Side of the query blocks, in query pixels.
    stride : int
        Only the query pixels of :func:`grid_pixels` at this stride (Q = H_s * W_s of them, row-major); their
        windows stay full-resolution windows of exemplar pixels. 1: every pixel, Q = P.

    Returns
    -------
    Tensor, (K, Q, T * T) float32
        ``out[k, i, t] = cos(q_i, e_k[window_indices(height, width, T)[i, t]])``.
    """
    _check(query, exemplars, height, width)
    if tile < 1:
        raise PixelNNError(f"tile must be >= 1, got {tile}")
    k, p, d = exemplars.shape
    dev = query.device
    rows, cols = grid_pixels(height, width, stride)
    gh, gw = len(rows), len(cols)
    idx = window_indices(height, width, window).to(dev).view(height, width, window * window)  # (H, W, T*T)
    half = window // 2
    q = query.float().view(height, width, d)
    if stride > 1:
        q, idx = q[rows][:, cols], idx[rows][:, cols]  # (H_s, W_s, d), (H_s, W_s, T*T)
    ex = exemplars.float().view(k, height, width, d)
    out = torch.empty(k, gh, gw, window * window, dtype=torch.float32, device=dev)
    for a0 in range(0, gh, tile):
        a1 = min(a0 + tile, gh)
        y0, y1 = int(rows[a0]), int(rows[a1 - 1]) + 1  # full-resolution rows of the block
        ry0, ry1 = min(max(y0 - half, 0), height - window), min(max(y1 - 1 - half, 0), height - window) + window
        for b0 in range(0, gw, tile):
            b1 = min(b0 + tile, gw)
            x0, x1 = int(cols[b0]), int(cols[b1 - 1]) + 1
            rx0, rx1 = min(max(x0 - half, 0), width - window), min(max(x1 - 1 - half, 0), width - window) + window
            rh, rw = ry1 - ry0, rx1 - rx0
            block = q[a0:a1, b0:b1].reshape(-1, d)  # (n, d), n = tile * tile
            rect = ex[:, ry0:ry1, rx0:rx1].reshape(k * rh * rw, d)  # (K * m, d), m = rh * rw
            sims = torch.mm(block, rect.T).view(-1, k, rh * rw)  # (n, K, m)
            win = idx[a0:a1, b0:b1].reshape(-1, window * window)  # (n, T*T) flat exemplar indices
            local = (win // width - ry0) * rw + (win % width - rx0)  # (n, T*T) inside the rectangle
            vals = sims.gather(2, local[:, None, :].expand(-1, k, -1))  # (n, K, T*T)
            out[:, a0:a1, b0:b1] = vals.permute(1, 0, 2).reshape(k, a1 - a0, b1 - b0, -1)
    return out.view(k, gh * gw, window * window)


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
        dev = best_sim.device
        return (torch.empty(0, p, dtype=torch.int64, device=dev), torch.empty(0, p, dtype=torch.int64, device=dev),
                torch.empty(0, p, device=dev))
    n = max(len(s.ranks) for s in specs)
    # Pad every set to n members by repeating its last one: a repeat never wins, since ties go to
    # the first member holding the maximum (a strict > over the members in order, as argmax does).
    dev = best_sim.device
    members = torch.tensor([list(s.ranks) + [s.ranks[-1]] * (n - len(s.ranks)) for s in specs], device=dev)  # (O, n)
    win = torch.tensor([win_of[s.window] for s in specs], device=dev)  # (O,)
    k, nw, p = best_sim.shape
    flat_sim, flat_pos = best_sim.reshape(k * nw, p), best_pos.reshape(k * nw, p)
    rows = members * nw + win[:, None]  # (O, n): row of (member, window) in the flat tables
    sim = flat_sim[rows[:, 0]]  # (O, P)
    pos = flat_pos[rows[:, 0]]
    rank = members[:, :1].expand(-1, p).clone()
    for j in range(1, n):
        cand = flat_sim[rows[:, j]]  # (O, P)
        better = cand > sim
        sim = torch.where(better, cand, sim)
        pos = torch.where(better, flat_pos[rows[:, j]], pos)
        rank = torch.where(better, members[:, j:j + 1], rank)
    return rank, pos, sim



def box_mean(maps: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean of (N, H, W) maps over the part of each patch x patch neighbourhood inside the image.

    Separable running sums (cumsum along rows, then columns), so the cost does not grow with ``patch``.
    """
    if patch == 1:
        return maps
    h = patch // 2

    def run(x: torch.Tensor, dim: int) -> torch.Tensor:  # sums over [t - h, t + h] clipped, along dim
        n = x.shape[dim]
        c = x.cumsum(dim)
        if n <= h + 1:
            return c.narrow(dim, n - 1, 1).expand_as(x).clone()
        out = torch.empty_like(x)
        k = min(h + 1, n)  # t in [0, h]: c[min(t + h, n - 1)]
        head = c.narrow(dim, h, max(0, min(k, n - h)))
        out.narrow(dim, 0, head.shape[dim]).copy_(head)
        if head.shape[dim] < k:
            out.narrow(dim, head.shape[dim], k - head.shape[dim]).copy_(
                c.narrow(dim, n - 1, 1).expand_as(out.narrow(dim, head.shape[dim], k - head.shape[dim])))
        mid = n - 2 * h - 1  # t in [h + 1, n - h - 1]: c[t + h] - c[t - h - 1]
        if mid > 0:
            torch.sub(c.narrow(dim, 2 * h + 1, mid), c.narrow(dim, 0, mid), out=out.narrow(dim, h + 1, mid))
        lo = max(h + 1, n - h)  # t in [max(h + 1, n - h), n - 1]: c[n - 1] - c[t - h - 1]
        if lo < n:
            torch.sub(c.narrow(dim, n - 1, 1), c.narrow(dim, lo - h - 1, n - lo), out=out.narrow(dim, lo, n - lo))
        return out

    n_h, n_w = maps.shape[-2:]
    counts = run(torch.ones(1, n_h, 1, device=maps.device), 1) * run(torch.ones(1, 1, n_w, device=maps.device), 2)  # (1, H, W)
    return run(run(maps, 2), 1).div_(counts)


def offset_similarities(query: torch.Tensor, exemplar: torch.Tensor, offsets: torch.Tensor, height: int,
                        width: int, pixels: torch.Tensor | None = None) -> torch.Tensor:
    """cos(q_i, e[i + v]) for every pixel i and offset v, (V, Q); 0 where i + v leaves the image.

    Parameters
    ----------
    query, exemplar : Tensor, (P, d)
    offsets : Tensor, (V, 2) int64
        (dy, dx) per offset.
    pixels : Tensor, (Q,) int64, optional
        Only these query pixels (flat indices); None: all, Q = P.
    """
    p = height * width
    at = torch.arange(p, device=query.device) if pixels is None else pixels
    ys, xs = at // width, at % width
    ty, tx = ys[None] + offsets[:, :1], xs[None] + offsets[:, 1:]  # (V, Q)
    ok = (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)
    target = ty.clamp(0, height - 1) * width + tx.clamp(0, width - 1)
    q = query.float() if pixels is None else query.float()[pixels]
    sims = torch.einsum("pd,vpd->vp", q, exemplar.float()[target])
    return sims * ok


@torch.inference_mode()
def coherent_matches(query: torch.Tensor, exemplars: torch.Tensor, height: int, width: int,
                     specs: Sequence[OutputSpec], windows: Sequence[int | None], window_sims: torch.Tensor,
                     *, patch: int = DEFAULT_PATCH_SIZE, smoothness: float = 0.03, sweeps: int = 2,
                     whole_offsets: int = 8, seed_stride: int = 4, stride: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coherent matches: every output pixel copies through an (exemplar, offset) label shared by its region.

    Pixel matching (:func:`match_windows` + :func:`select_sets`) picks, for every pixel alone, the
    best position in the window, so neighbouring pixels often copy from unrelated places: seams (see
    :mod:`pixelnn.evaluation.coherence`). Here a pixel's label is an exemplar k of the output's set
    and an offset v = (dy, dx); it copies e_k[i + v]. Neighbours with the same label copy
    neighbouring exemplar pixels in their arrangement, so they form no seam. The labels maximise

        sum_i S_patch(i, label_i) - smoothness * #{4-neighbour pairs with different labels}
        S_patch(i, k, v) = mean over the patch x patch pixels i + d of cos(q_{i+d}, e_k[i+d+v])

    a patch similarity (neighbours share most of it) plus a Potts prior. They start at each pixel's
    best label and are improved by iterated conditional modes on a red-black checkerboard, each pixel
    choosing among its own and its 4 neighbours' labels (the energy never increases).

    Candidate offsets: v = 0 for the 1x1 window; |dy|, |dx| <= T // 2 for a T x T window (the
    window centred on i, clipped to the image, so the border shift of :func:`window_indices` is not
    applied); for the whole image, those of the largest window plus, per exemplar, the
    ``whole_offsets`` most frequent offsets of the whole-image matches of every ``seed_stride``-th
    pixel in both directions. A label never copies from outside the exemplar.

    Parameters
    ----------
    query : Tensor, (P, d)
        Unit-norm pixel descriptors of the query.
    exemplars : Tensor, (K, P, d)
        Unit-norm pixel descriptors of the K neighbours.
    height, width : int
        Pixel grid, P = height * width.
    specs : sequence of OutputSpec
        The O outputs; their windows must be among ``windows``.
    windows : sequence of int or None
        The windows given to :func:`match_windows`; must include a finite window T > 1.
    window_sims : Tensor, (K, Q, T * T)
        From :func:`window_similarities` for the largest finite window T, at the same ``stride``.
    patch : int
        Odd side of the patch similarity; 1 scores single pixels.
    smoothness : float
        Cost of a label change between neighbours, in units of mean cosine similarity.
    sweeps : int
        Red-black ICM sweeps (0: each pixel's best label).
    whole_offsets : int
        Extra whole-image candidate offsets per exemplar.
    seed_stride : int
        Subsampling of the query pixels whose whole-image matches seed those offsets.
    stride : int
        Label only the query pixels of :func:`grid_pixels` at this stride (approximate search,
        ``search="coarse"``): their patch similarities use every ``stride``-th pixel of the patch (a patch of
        ``patch // stride`` grid pixels, made odd), the smoothing runs on the grid, and each full-resolution
        pixel takes the label of its grid pixel, copying from i + v (clamped to the exemplar). Offsets stay
        full-resolution. 1 (exact): every pixel; ``window_sims`` must then come from the same stride.

    Returns
    -------
    rank : Tensor, (O, P) int64
        Exemplar rank per output pixel.
    pos : Tensor, (O, P) int64
        Copied pixel i + v.
    sim : Tensor, (O, P) float32
        Patch similarity of the chosen label.
    """
    _check(query, exemplars, height, width)
    if patch < 1 or patch % 2 == 0:
        raise PixelNNError(f"patch must be an odd side >= 1, got {patch}")
    if smoothness < 0 or sweeps < 0 or whole_offsets < 0 or seed_stride < 1 or stride < 1:
        raise PixelNNError("smoothness, sweeps and whole_offsets must be >= 0, seed_stride and stride >= 1")
    sides = sorted({w for w in windows if w is not None})
    if not sides or sides[-1] < 2:
        raise PixelNNError(f"coherent matching needs a finite window larger than 1; windows: {list(windows)}")
    k, p_full, _ = exemplars.shape
    dev = query.device
    outer = sides[-1]
    half = outer // 2
    fy, fx = torch.arange(p_full, device=dev) // width, torch.arange(p_full, device=dev) % width  # every pixel
    ys, xs = fy, fx  # the labelled pixels' full-resolution coordinates
    if stride > 1:  # the labelled pixels: a grid of gh x gw pixels
        rows, cols = (t.to(dev) for t in grid_pixels(height, width, stride))
        gh, gw = len(rows), len(cols)
        grid = (rows[:, None] * width + cols[None, :]).reshape(-1)  # (Q,) their flat indices
        ys, xs = grid // width, grid % width
        patch = max(1, (patch // stride) | 1)
    else:
        gh, gw, grid = height, width, None
    p = gh * gw
    if window_sims.shape[1] != p:
        raise PixelNNError(f"window_sims has {window_sims.shape[1]} query pixels, expected {p} (stride {stride})")
    r = torch.arange(-half, half + 1, device=dev)
    offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)  # (V, 2), row-major
    v = len(offsets)
    # 1. Candidate offsets per exemplar: the window's V, plus M frequent whole-image ones.
    whole = None in windows and whole_offsets > 0
    m = whole_offsets if whole else 0
    cand = offsets[None].repeat(k, 1, 1)  # (K, V, 2)
    if whole:  # whole-image matches of a pixel subsample: their most frequent offsets
        sub = ((fy % seed_stride == seed_stride // 2) & (fx % seed_stride == seed_stride // 2)).nonzero()[:, 0]
        sub = sub if len(sub) else torch.arange(p_full, device=dev)
        qs = query[sub].float()  # (Ps, d)
        best = torch.stack([_argmax_rows(torch.mm(qs, exemplars[e].float().T), width)[1] for e in range(k)])  # (K, Ps)
        code = (best // width - fy[sub] + height) * (2 * width) + (best % width - fx[sub] + width)  # (K, Ps)
        counts = torch.zeros(k, 4 * height * width, dtype=torch.int64, device=dev).scatter_add_(1, code, torch.ones_like(code))
        top = counts.topk(m, dim=1).indices  # (K, M); rare offsets may repeat the window's: harmless
        extra = torch.stack([top // (2 * width) - height, top % (2 * width) - width], -1)  # (K, M, 2)
        cand = torch.cat([cand, extra], 1)  # (K, V + M, 2)
    def inside_of(off: torch.Tensor) -> torch.Tensor:  # (..., 2) offsets -> (..., P): i + v inside the image
        ty, tx = ys + off[..., :1], xs + off[..., 1:]
        return (ty >= 0) & (ty < height) & (tx >= 0) & (tx < width)

    # 2. Pixel similarities of every candidate: window offsets read from the window's similarities.
    y0 = (ys - half).clamp(0, height - outer)
    x0 = (xs - half).clamp(0, width - outer)
    slot = ((ys + offsets[:, :1] - y0) * outer + (xs + offsets[:, 1:] - x0)).clamp(0, outer * outer - 1)  # (V, P)
    pix = torch.empty(k, v + m, p, device=dev)
    torch.gather(window_sims, 2, slot.T[None].expand(k, -1, -1), out=pix[:, :v].transpose(1, 2))  # (K, V, P)
    inside_win = inside_of(offsets)  # (V, P)
    pix[:, :v].mul_(inside_win)
    for e in range(k if m else 0):
        pix[e, v:] = offset_similarities(query, exemplars[e], cand[e, v:], height, width, pixels=grid)
    # 3. Patch similarities; a label whose own pixel would copy from outside the exemplar is never taken.
    score = box_mean(pix.view(-1, gh, gw), patch).view(k, v + m, p)
    score[:, :v].masked_fill_(~inside_win, -4.0)
    if m:
        score[:, v:].masked_fill_(~inside_of(cand[:, v:]), -4.0)
    # 4. Each pixel's best label: best offset per exemplar and window, then the best set member. One pass over
    # the candidates in order, a strict > keeping the first of equal scores (as max(dim) does, 4x faster here).
    best_val = torch.empty(k, len(windows), p, device=dev)
    best_off = torch.zeros(k, len(windows), p, dtype=torch.int64, device=dev)
    member = torch.zeros(len(windows), v + m, dtype=torch.bool)  # (W, V + M): candidate c is in window w
    for w, side in enumerate(windows):
        if side is None:
            member[w] = True
        else:
            member[w, :v] = (offsets.abs() <= side // 2).all(1).cpu() if side != outer else True
    started = [False] * len(windows)
    for c in range(v + m):
        col = score[:, c]  # (K, P)
        for w in member[:, c].nonzero()[:, 0].tolist():
            if not started[w]:
                best_val[:, w] = col
                best_off[:, w] = c
                started[w] = True
            else:
                better = col > best_val[:, w]
                best_val[:, w] = torch.where(better, col, best_val[:, w])
                best_off[:, w].masked_fill_(better, c)
    rank, off, _ = select_sets(best_val, best_off, specs, windows)  # (O, P) each
    # 5. Potts smoothing by red-black ICM over labels code = rank * (V + M) + offset index.
    flat_score = score.view(-1)  # index: code * P + pixel
    labels = rank * (v + m) + off  # (O, P)
    gy, gx = torch.arange(p, device=dev) // gw, torch.arange(p, device=dev) % gw  # grid coordinates
    nbrs = []
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = gy + dy, gx + dx
        nbrs.append((ny.clamp(0, gh - 1) * gw + nx.clamp(0, gw - 1), (ny >= 0) & (ny < gh) & (nx >= 0) & (nx < gw)))
    halves = [torch.arange(p, device=dev)[(gy + gx) % 2 == c] for c in (0, 1)]
    for _ in range(sweeps if smoothness > 0 else 0):
        for cur in halves:  # (Q,) pixels whose 4 neighbours are all in the other half
            own = labels[:, cur]  # (O, Q)
            nb = [labels[:, n[cur]] for n, _ in nbrs]  # 4 x (O, Q)
            nb_ok = [ok[cur] for _, ok in nbrs]  # 4 x (Q,)
            same = {(a, b): (nb[a] == nb[b]) & nb_ok[a] & nb_ok[b] for a in range(4) for b in range(a + 1, 4)}
            # total of each candidate: patch score + smoothness * neighbours sharing the label
            best_total = flat_score[own * p + cur] + smoothness * sum((own == nb[b]) & nb_ok[b] for b in range(4))
            best = own
            for a in range(4):
                agree = 1 + sum(same[min(a, b), max(a, b)] for b in range(4) if b != a)
                total = flat_score[nb[a] * p + cur] + smoothness * agree
                better = (total > best_total) & nb_ok[a]  # strict: ties keep the earlier candidate
                best_total = torch.where(better, total, best_total)
                best = torch.where(better, nb[a], best)
            labels[:, cur] = best
    sim = flat_score[labels * p + torch.arange(p, device=dev)]  # (O, Q)
    if stride > 1:  # every pixel takes its grid pixel's label
        owner = (fy // stride) * gw + fx // stride  # (P,)
        labels, sim = labels[:, owner], sim[:, owner]  # (O, P)
        off_yx = cand.reshape(-1, 2)[labels]  # (O, P, 2)
        pos = (fy + off_yx[..., 0]).clamp(0, height - 1) * width + (fx + off_yx[..., 1]).clamp(0, width - 1)
        return labels // (v + m), pos, sim
    off_yx = cand.reshape(-1, 2)[labels]  # (O, P, 2)
    pos = (ys + off_yx[..., 0]) * width + xs + off_yx[..., 1]
    return labels // (v + m), pos, sim
