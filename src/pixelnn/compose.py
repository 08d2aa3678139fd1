"""Composition: turn matches into output images by copying exemplars' high frequencies.

The kernels of the composition modes (:mod:`pixelnn.modes` holds the modes themselves):
:func:`compose_copied` (``matched`` and ``coherent``), :func:`compose_global`, :func:`compose_authors`,
and :func:`recompose`, which rebuilds copied outputs from saved correspondences.

- ``"matched"`` (default, paper eq. 3): ``out_i = f_i(x) + (y_k[j] - f_j(x_k))``, the residual
  copied from the *matched* pixel j of the chosen exemplar k.
- ``"coherent"``: the same copy, from matches that are coherent across neighbouring pixels
  (:func:`pixelnn.matching.coherent_matches`: patch similarities and a smoothness prior over
  (exemplar, offset) labels), so that regions copy whole pieces of one exemplar instead of a
  patchwork of single pixels.
- ``"global"`` (paper eq. 2): ``out_i = f_i(x) + (y_k[i] - f_i(x_k))``, the residual of whole
  exemplars at the same position, averaged over the exemplar set (no pixel matching).
- ``"authors"`` (the authors' released code): the residual at the *same* position i of every
  exemplar in the set, weighted by that exemplar's best similarity inside the window, averaged.

Colour (``color=``): ``"rgb"`` copies the residual in all three channels; ``"luma"`` converts to
YCbCr (JPEG/BT.601 full range) and copies it in Y only, keeping f(x)'s chroma (what the authors
did for faces and edges).

Images are uint8 (N, H, W, 3); arithmetic is float32 on the uint8 values, then rounded and
clipped, so the same inputs always give bit-identical outputs (see :func:`recompose`).
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import torch

from pixelnn.errors import PixelNNError
from pixelnn.matching import OutputSpec
from pixelnn.config import COLORS, check_choice

_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC2RGB = torch.linalg.inv(_RGB2YCC)


def _apply3(m: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(..., 3) x 3x3 matrix, elementwise in a fixed order (bit-reproducible for any batch shape)."""
    c = images.unbind(-1)
    return torch.stack([m[r, 0] * c[0] + m[r, 1] * c[1] + m[r, 2] * c[2] for r in range(3)], dim=-1)


def _space(color: str, chroma_weight: float) -> str:
    """The space residuals are copied in: ``rgb``, or ``ycc`` (YCbCr) for luma or a partial chroma weight."""
    return "rgb" if color == "rgb" and chroma_weight == 1 else "ycc"


def _residual_space(images: torch.Tensor, space: str) -> torch.Tensor:
    """(..., 3) float RGB -> the space residuals are taken in (RGB, or YCbCr)."""
    return images if space == "rgb" else _apply3(_RGB2YCC, images)


def _to_rgb_uint8(images: torch.Tensor, space: str) -> np.ndarray:
    rgb = images if space == "rgb" else _apply3(_YCC2RGB, images)
    return rgb.round().clamp(0, 255).to(torch.uint8).numpy()


def highpass(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W, C) float minus its Gaussian blur of std ``sigma`` pixels (reflect padding); sigma 0: unchanged."""
    if sigma <= 0:
        return images
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    n, h, w, c = images.shape
    x = images.permute(0, 3, 1, 2).reshape(n * c, 1, h, w)  # (N*C, 1, H, W)
    pad_h, pad_w = min(radius, h - 1), min(radius, w - 1)
    x = torch.nn.functional.pad(x, (pad_w, pad_w, 0, 0), mode="reflect")
    x = torch.nn.functional.conv2d(x, g[radius - pad_w:radius + pad_w + 1].view(1, 1, 1, -1))
    x = torch.nn.functional.pad(x, (0, 0, pad_h, pad_h), mode="reflect")
    x = torch.nn.functional.conv2d(x, g[radius - pad_h:radius + pad_h + 1].view(1, 1, -1, 1))
    return images - x.reshape(n, c, h, w).permute(0, 2, 3, 1)


def vote_residuals(residual: torch.Tensor, rank: torch.Tensor, pos: torch.Tensor, height: int, width: int,
                   vote: int) -> torch.Tensor:
    """Patch voting: each pixel averages the residuals its ``vote x vote`` neighbours' matches imply for it.

    Neighbour n = i - d matched pixel j_n of exemplar r_n; the patch around j_n puts
    ``residual[r_n, j_n + d]`` on pixel i (Image Analogies, GPNN). Votes whose source would fall
    outside the exemplar are skipped; the pixel's own match always votes.

    Parameters
    ----------
    residual : Tensor, (K, P, C)
    rank, pos : Tensor, (O, P) int64
    height, width : int
    vote : int
        Odd patch side; 1 copies each pixel's own match.

    Returns
    -------
    Tensor, (O, P, C)
    """
    k, p, c = residual.shape
    flat = residual.reshape(k * p, c)
    if vote == 1:
        return flat[rank * p + pos]
    if vote < 1 or vote % 2 == 0:
        raise PixelNNError(f"vote must be an odd patch side >= 1, got {vote}")
    half = vote // 2
    o = rank.shape[0]
    table = torch.cat([flat, flat.new_zeros(1, c)])  # row K * P: the zero vote of a source outside the exemplar
    r2, p2 = rank.view(o, height, width), pos.view(o, height, width)
    sy, sx = p2 // width, p2 % width
    own = r2 * p + p2  # (O, H, W): each pixel's own match, a row of the table
    row_ok = {dy: (sy + dy >= 0) & (sy + dy < height) for dy in range(-half, half + 1)}
    col_ok = {dx: (sx + dx >= 0) & (sx + dx < width) for dx in range(-half, half + 1)}
    outside = torch.tensor(k * p)
    total = torch.zeros(o, height, width, c)
    count = torch.zeros(o, height, width, 1)
    for dy in range(-half, half + 1):
        for dx in range(-half, half + 1):
            # pixel (y, x) receives the vote of neighbour (y - dy, x - dx): source (sy + dy, sx + dx) of its exemplar
            ty0, ty1 = max(dy, 0), height + min(dy, 0)
            tx0, tx1 = max(dx, 0), width + min(dx, 0)
            nb = (slice(None), slice(ty0 - dy, ty1 - dy), slice(tx0 - dx, tx1 - dx))  # the voting neighbours
            ok = row_ok[dy][nb] & col_ok[dx][nb]
            src = torch.where(ok, own[nb] + (dy * width + dx), outside)  # (O, h', w') table rows
            total[:, ty0:ty1, tx0:tx1] += table.index_select(0, src.reshape(-1)).view(*src.shape, c)
            count[:, ty0:ty1, tx0:tx1] += ok[..., None]
    return (total / count.clamp_min(1)).reshape(o, p, c)


def _residual(res: torch.Tensor, color: str, chroma_weight: float = 1.0) -> torch.Tensor:
    """Zero the chroma residual in luma mode; scale it by ``chroma_weight`` (YCbCr) otherwise."""
    if color == "luma" or chroma_weight != 1:
        res = res.clone()
        res[..., 1:] *= 0.0 if color == "luma" else chroma_weight
    return res


def _exemplar_residuals(photos: np.ndarray, stage1: np.ndarray, color: str, highpass_sigma: float,
                        chroma_weight: float = 1.0) -> torch.Tensor:
    """(K, H, W, 3) uint8 photos y_k and f(x_k) -> (K, P, 3) residuals y_k - f(x_k), optionally high-passed.

    The filtering is elementwise along rows and columns of each image, so a residual does not
    depend on which other exemplars are in the batch (:func:`recompose` relies on it).
    """
    k, h, w, _ = photos.shape
    space = _space(color, chroma_weight)
    ey = _residual_space(torch.from_numpy(np.asarray(photos, np.float32)).reshape(k, h * w, 3), space)
    ef = _residual_space(torch.from_numpy(np.asarray(stage1, np.float32)).reshape(k, h * w, 3), space)
    residual = _residual(ey - ef, color, chroma_weight)  # (K, P, 3): high frequencies of each exemplar
    if highpass_sigma > 0:
        residual = highpass(residual.reshape(k, h, w, 3), highpass_sigma).reshape(k, h * w, 3)
    return residual


def _query_and_residuals(stage1: np.ndarray, ex_photos: np.ndarray, ex_stage1: np.ndarray, color: str,
                         highpass_sigma: float, chroma_weight: float) -> tuple[torch.Tensor, torch.Tensor, str]:
    """f(x) (P, 3) and the exemplar residuals (K, P, 3) in the space residuals are copied in, and that space."""
    check_choice("color", color, COLORS)
    if not 0 <= chroma_weight <= 1:
        raise PixelNNError(f"chroma_weight must be between 0 and 1, got {chroma_weight}")
    h, w, _ = stage1.shape
    space = _space(color, chroma_weight)
    f = _residual_space(torch.from_numpy(np.asarray(stage1, np.float32)).reshape(h * w, 3), space)  # (P, 3)
    residual = _exemplar_residuals(ex_photos, ex_stage1, color, highpass_sigma, chroma_weight)  # (K, P, 3)
    return f, residual, space


@torch.inference_mode()
def compose_copied(stage1: np.ndarray, ex_photos: np.ndarray, ex_stage1: np.ndarray, rank: torch.Tensor,
                   pos: torch.Tensor, *, color: str = "rgb", vote: int = 1, highpass_sigma: float = 0.0,
                   chroma_weight: float = 1.0, seam_blend: float = 0.0) -> np.ndarray:
    """Paper eq. 3, ``out_i = f_i(x) + (y_k[j] - f_j(x_k))``: every pixel copies the residual of its match.

    Parameters
    ----------
    stage1 : ndarray, (H, W, 3) uint8
        f(x) of the query.
    ex_photos, ex_stage1 : ndarray, (K, H, W, 3) uint8
        Photos y_k and stage-1 outputs f(x_k) of the K neighbours (in rank order).
    rank, pos : Tensor, (O, P) int64
        Per output pixel, the neighbour rank and the flat pixel it copies (from
        :func:`pixelnn.matching.select_sets` or :func:`pixelnn.matching.coherent_matches`).
    color : {'rgb', 'luma'}
    vote : int
        Odd side of the patch vote (:func:`vote_residuals`); 1 copies each pixel's own match (paper eq. 3).
    highpass_sigma : float
        Remove each exemplar residual's Gaussian blur of this std (pixels) before copying, so an
        exemplar's colour does not leak into the output's low frequencies; 0 keeps it (paper).
    chroma_weight : float
        ``color="rgb"``: copy the residual's chroma (YCbCr) scaled by this weight: 1 copies the
        exemplar's colour (paper), 0 is ``color="luma"``; between, the output's colour moves part of
        the way from f(x)'s towards the exemplar's.
    seam_blend : float
        Gradient-domain fusion of the copied pieces over about this many pixels at every seam
        (:func:`fuse_seams`); 0 (default): none, the copies as they are (paper eq. 3).

    Returns
    -------
    ndarray, (O, H, W, 3) uint8
    """
    h, w, _ = stage1.shape
    f, residual, space = _query_and_residuals(stage1, ex_photos, ex_stage1, color, highpass_sigma, chroma_weight)
    outs = f[None] + vote_residuals(residual, rank, pos, h, w, vote)  # (O, P, 3)
    if seam_blend > 0:
        outs = fuse_seams(outs, f, residual, rank, pos, h, w, seam_blend)
    return _to_rgb_uint8(outs, space).reshape(len(rank), h, w, 3)


@torch.inference_mode()
def compose_global(stage1: np.ndarray, ex_photos: np.ndarray, ex_stage1: np.ndarray, specs: Sequence[OutputSpec],
                   *, color: str = "rgb", highpass_sigma: float = 0.0, chroma_weight: float = 1.0) -> np.ndarray:
    """Paper eq. 2, ``out_i = f_i(x) + (y_k[i] - f_i(x_k))``: each spec's members' residuals at the same
    position, averaged. Arguments as in :func:`compose_copied`; returns (O, H, W, 3) uint8."""
    h, w, _ = stage1.shape
    f, residual, space = _query_and_residuals(stage1, ex_photos, ex_stage1, color, highpass_sigma, chroma_weight)
    outs = torch.empty(len(specs), h * w, 3)
    for o, spec in enumerate(specs):
        outs[o] = f + residual[list(spec.ranks)].mean(dim=0)
    return _to_rgb_uint8(outs, space).reshape(len(specs), h, w, 3)


@torch.inference_mode()
def compose_authors(stage1: np.ndarray, ex_photos: np.ndarray, ex_stage1: np.ndarray, specs: Sequence[OutputSpec],
                    best_sim: torch.Tensor, windows: Sequence[int | None], *, color: str = "rgb",
                    highpass_sigma: float = 0.0, chroma_weight: float = 1.0) -> np.ndarray:
    """The authors' released code: at the same position, every member's residual weighted by its best
    similarity inside the spec's window (``best_sim`` (K, W, P) from
    :func:`pixelnn.matching.match_windows` for ``windows``), averaged. Returns (O, H, W, 3) uint8."""
    h, w, _ = stage1.shape
    f, residual, space = _query_and_residuals(stage1, ex_photos, ex_stage1, color, highpass_sigma, chroma_weight)
    win_of = {wi: i for i, wi in enumerate(windows)}
    outs = torch.empty(len(specs), h * w, 3)
    for o, spec in enumerate(specs):
        members = list(spec.ranks)
        weight = best_sim[members, win_of[spec.window]].clamp_min(0)  # (n, P)
        norm = weight.sum(dim=0).clamp_min(1e-8)  # (P,)
        outs[o] = f + (weight[..., None] * residual[members]).sum(dim=0) / norm[:, None]
    return _to_rgb_uint8(outs, space).reshape(len(specs), h, w, 3)


@functools.lru_cache(maxsize=8)
def _dct_basis(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The orthonormal DCT-II basis (n, n) float64, whose columns are the eigenvectors of the path graph's
    Laplacian (Neumann ends), and its eigenvalues (n,) ``2 - 2 cos(pi k / n)``."""
    k = torch.arange(n, dtype=torch.float64)
    basis = torch.cos(torch.pi * (k[:, None] + 0.5) * k[None, :] / n)  # (n, n): [pixel, frequency]
    basis[:, 0] *= (1.0 / n) ** 0.5
    basis[:, 1:] *= (2.0 / n) ** 0.5
    return basis, 2 - 2 * torch.cos(torch.pi * k / n)


def _gain(width: float) -> float:
    """The screening alone leaves part of a step (about 12% at width 4). Across a straight line of jumps
    the solution is c = +-A q^k at distance k, with q + 1/q = 2 + screen and A (3 - q + screen) = g * step,
    so g = (3 - q + screen) / 2 gives 2A = step."""
    screen = 1.0 / float(width) ** 2
    q = 1 + screen / 2 - (screen + screen ** 2 / 4) ** 0.5
    return (3 - q + screen) / 2


def jump_correction(jump_h: torch.Tensor, jump_v: torch.Tensor, width: float) -> torch.Tensor:
    """The smooth correction c (C, H, W) float64 that takes given jumps out of an image's neighbour steps.

    c minimises ``sum over 4-neighbour pairs (i, j) of (c_i - c_j - t_ij)^2 + sum_i c_i^2 / width^2``
    with ``t_ij = g * jump_ij``: c_j - c_i = -jump_ij where a jump is given (0 elsewhere: no gradient of
    its own), fading out within about ``width`` pixels; g (:func:`_gain`) makes a straight line of jumps
    come out exactly. The normal equations ``(L + 1/width^2) c = div t``, L the grid graph's Laplacian
    with Neumann borders, are solved exactly in the DCT-II basis, which diagonalises L.

    Parameters
    ----------
    jump_h : Tensor, (C, H, W-1) float64
        The part of ``x[:, :, 1:] - x[:, :, :-1]`` to take out (0 where nothing is to change).
    jump_v : Tensor, (C, H-1, W) float64
        The same for ``x[:, 1:, :] - x[:, :-1, :]``.
    width : float, > 0

    Returns
    -------
    Tensor, (C, H, W) float64
    """
    c, h, w = jump_v.shape[0], jump_v.shape[1] + 1, jump_v.shape[2]
    screen = 1.0 / float(width) ** 2
    gain = _gain(width)
    b = torch.zeros(c, h, w, dtype=torch.float64)  # div t: nonzero only beside the jumps
    dh, dv = jump_h * gain, jump_v * gain
    b[:, :, :-1] += dh
    b[:, :, 1:] -= dh
    b[:, :-1, :] += dv
    b[:, 1:, :] -= dv
    basis_y, eig_y = _dct_basis(h)
    basis_x, eig_x = _dct_basis(w)
    denom = eig_y[:, None] + eig_x[None, :] + screen  # (H, W): the eigenvalues of L + screen
    coef = basis_y.T @ b @ basis_x / denom  # (C, H, W) in the DCT basis
    return basis_y @ coef @ basis_x.T


def border_correction(residual: torch.Tensor, region: np.ndarray, width: float) -> torch.Tensor:
    """The smooth correction c (H, W, C) float64 that takes out a residual's jumps at region borders:
    :func:`jump_correction` of the residual's steps on the 4-neighbour pairs that cross a border
    (``region`` differs), so that across a border the residual no longer jumps.

    Parameters
    ----------
    residual : Tensor, (H, W, C) float64
    region : ndarray, (H, W) int
    width : float, > 0

    Returns
    -------
    Tensor, (H, W, C) float64
    """
    region = np.asarray(region)
    cross_h = torch.from_numpy(region[:, 1:] != region[:, :-1])  # (H, W-1): the pair crosses a border
    cross_v = torch.from_numpy(region[1:, :] != region[:-1, :])  # (H-1, W)
    r = residual.to(torch.float64).permute(2, 0, 1).contiguous()  # (C, H, W)
    jump_h = (r[:, :, 1:] - r[:, :, :-1]) * cross_h  # (C, H, W-1): r_j - r_i across a border
    jump_v = (r[:, 1:, :] - r[:, :-1, :]) * cross_v  # (C, H-1, W)
    return jump_correction(jump_h, jump_v, width).permute(1, 2, 0).contiguous()


def _exemplar_step(flat: torch.Tensor, rank: torch.Tensor, y: torch.Tensor, x: torch.Tensor, dy: int, dx: int,
                   h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exemplar ``rank``'s own residual step from (y, x) to (y + dy, x + dx), with where both lie inside it.

    ``flat`` (K H W, C) holds the residuals; ``rank``, ``y``, ``x`` are (H', W') int64. Returns the
    steps (H', W', C), zero where invalid, and the validity (H', W') bool.
    """
    ok = (y >= 0) & (x >= 0) & (y + dy < h) & (x + dx < w)
    here = rank * (h * w) + y.clamp(0, h - 1) * w + x.clamp(0, w - 1)
    there = rank * (h * w) + (y + dy).clamp(0, h - 1) * w + (x + dx).clamp(0, w - 1)
    return (flat[there] - flat[here]) * ok[..., None], ok


def fuse_seams(outs: torch.Tensor, f: torch.Tensor, residual: torch.Tensor, rank: torch.Tensor, pos: torch.Tensor,
               height: int, width: int, blend: float) -> torch.Tensor:
    """Gradient-domain fusion of copied pieces (Photomontage, Agarwala et al. 2004): at every seam the
    output's step becomes the mean of the two pieces' own steps there, by a smooth correction
    (:func:`jump_correction`) that fades out within about ``blend`` pixels.

    A seam pair (i, j) (:func:`pixelnn.evaluation.coherence.seam_mask`: the two pixels do not continue
    one copy) copies pixel a of exemplar k and pixel b of exemplar l. Its target step is the mean of
    the steps each exemplar has there, ``r_k[a + d] - r_k[a]`` and ``r_l[b] - r_l[b - d]`` (either alone
    at an exemplar's edge), instead of the jump ``r_l[b] - r_k[a]`` between two unrelated pixels. Every
    pixel keeps its source: the correction holds no exemplar's pixels, only the low-frequency misfit
    of the pieces.

    Parameters
    ----------
    outs : Tensor, (O, P, 3) float
        Composed outputs (in the residual space), before rounding.
    f : Tensor, (P, 3) float
        f(x) in that space.
    residual : Tensor, (K, P, 3) float
        The exemplar residuals that were copied.
    rank, pos : Tensor, (O, P) int64
        Each output pixel's exemplar (index into ``residual``) and source pixel.
    height, width : int
    blend : float, > 0

    Returns
    -------
    Tensor, (O, P, 3) float
        The fused outputs, one at a time in float64 (independent of the batch).
    """
    h, w, p = height, width, height * width
    k = residual.shape[0]
    flat = residual.reshape(k * p, -1).to(torch.float64)  # (K P, 3)
    fused = torch.empty_like(outs)
    for o in range(len(outs)):
        rk, ps = rank[o].reshape(h, w), pos[o].reshape(h, w)
        sy, sx = ps // w, ps % w
        u = (outs[o].to(torch.float64) - f.to(torch.float64)).reshape(h, w, -1)  # the output's residual

        jumps = []
        for dy, dx in ((0, 1), (1, 0)):
            ri, yi, xi = (t[:h - dy, :w - dx] for t in (rk, sy, sx))  # the pair's first pixel
            rj, yj, xj = (t[dy:, dx:] for t in (rk, sy, sx))  # and its second
            seam = ~((ri == rj) & (yj == yi + dy) & (xj == xi + dx))
            g1, ok1 = _exemplar_step(flat, ri, yi, xi, dy, dx, h, w)  # the first piece's own step there
            g2, ok2 = _exemplar_step(flat, rj, yj - dy, xj - dx, dy, dx, h, w)  # the second piece's own step (from b - d to b)
            n = (ok1.to(torch.float64) + ok2.to(torch.float64)).clamp_min(1)[..., None]
            target = (g1 + g2) / n  # (H', W', 3)
            actual = u[dy:, dx:] - u[:h - dy, :w - dx]
            jumps.append(((actual - target) * (seam & (ok1 | ok2))[..., None]).permute(2, 0, 1))
        c = jump_correction(jumps[0], jumps[1], blend).permute(1, 2, 0).reshape(p, -1)
        fused[o] = (outs[o].to(torch.float64) + c).to(outs.dtype)
    return fused


@torch.inference_mode()
def blend_borders(outputs: np.ndarray, stage1: np.ndarray, region: np.ndarray, width: float) -> np.ndarray:
    """Spread the colour step at region borders over about ``width`` pixels on either side (Poisson blending).

    At a border two exemplar sets meet, so the copied residuals ``r = out - f(x)`` jump there. Every
    output gets the smooth correction of :func:`border_correction`: across the border the output's step
    becomes f(x)'s (the residual's jump is taken out), elsewhere the correction adds no gradient of its
    own and fades out within about ``width`` pixels (Perez et al. 2003, "Poisson image editing", with a
    screened membrane). Every pixel keeps its recorded source: the correction holds no high frequency
    of any exemplar, only the low-frequency difference of the two sides.

    Float64, one output at a time, so the result does not depend on the batch and :func:`recompose`
    rebuilds it bit-exactly.

    Parameters
    ----------
    outputs : ndarray, (O, H, W, 3) uint8
        Composed outputs.
    stage1 : ndarray, (H, W, 3) uint8
        f(x).
    region : ndarray, (H, W) int
        Each pixel's exemplar set (:func:`pixelnn.regions.region_map`).
    width : float
        Decay length of the correction in pixels; 0 (or a single region) returns ``outputs`` unchanged.

    Returns
    -------
    ndarray, (O, H, W, 3) uint8
    """
    region = np.asarray(region)
    if width <= 0 or (region == region.flat[0]).all():
        return outputs
    f = torch.from_numpy(np.asarray(stage1, np.float64))  # (H, W, 3)
    blended = np.empty_like(outputs)
    for o in range(len(outputs)):
        u = torch.from_numpy(np.asarray(outputs[o], np.float64))  # (H, W, 3)
        c = border_correction(u - f, region, width)
        blended[o] = (u + c).round().clamp(0, 255).to(torch.uint8).numpy()
    return blended


def back_project(outputs: np.ndarray, x: np.ndarray, factor: int, max_iterations: int = 16) -> np.ndarray:
    """Make every output's area downsampling equal the superres input exactly (issue 16, part 2).

    Each ``factor`` x ``factor`` block of an output, per channel, is shifted by the same integer so that its sum
    becomes ``x * factor**2`` (its mean, and so :func:`pixelnn.tasks.area_downsample`, is then exactly ``x``):
    the block's high frequencies stay, only its mean moves. What a shift cannot give because of clipping at 0
    or 255 is spread over the block's other pixels, and the last units go one each to the block's first free
    pixels in raster order, so the result is deterministic and exact.

    Parameters
    ----------
    outputs : ndarray, (O, S, S, 3) uint8
    x : ndarray, (S / factor, S / factor, 3) uint8
        The input thumbnail.
    factor : int
    max_iterations : int
        Rounds of shifting (each settles every block that clipping does not hold back; 2-3 are typical).

    Returns
    -------
    ndarray, (O, S, S, 3) uint8
        ``area_downsample(result, factor)[o] == x`` for every output.
    """
    o = np.asarray(outputs)
    n, size, _, c = o.shape
    s, f2 = size // factor, factor * factor
    if size % factor or np.asarray(x).shape != (s, s, c):
        raise PixelNNError(f"outputs {o.shape} do not downsample by {factor} to the input {np.asarray(x).shape}")
    # int16 holds every intermediate (|shift| <= 64 * 255); sums are taken in int32
    blocks = o.reshape(n, s, factor, s, factor, c).transpose(0, 1, 3, 5, 2, 4).astype(np.int16).reshape(n, s, s, c, f2)
    target = np.asarray(x, np.int32)[None] * f2  # (1, s, s, C)
    for _ in range(max_iterations):
        delta = target - blocks.sum(-1, dtype=np.int32)  # (O, s, s, C)
        if not delta.any():
            break
        up = delta > 0
        free = np.where(up[..., None], blocks < 255, blocks > 0)  # pixels that can still move that way
        count = free.sum(-1, dtype=np.int32)
        shift = np.abs(delta) // np.maximum(count, 1)  # the same shift for every free pixel of the block
        rest = np.abs(delta) - shift * count  # what the shift leaves: one unit each to the first ones
        sign = np.sign(delta).astype(np.int16)
        move = free * (shift * sign).astype(np.int16)[..., None]
        if rest.any():
            move += (free & (np.cumsum(free, axis=-1, dtype=np.int16) <= rest[..., None])) * sign[..., None]
        blocks += move
        np.clip(blocks, 0, 255, out=blocks)
    out = blocks.reshape(n, s, s, c, factor, factor).transpose(0, 1, 4, 2, 5, 3).reshape(n, size, size, c)
    return out.astype(np.uint8)


def recompose_keywords(options: Any, x: np.ndarray | None = None) -> dict[str, Any]:
    """The keywords of :func:`recompose` that rebuild the outputs of resolved ``options``
    (:class:`pixelnn.options.SynthesisOptions`, e.g. a result's or a ``manifest.json``'s) for input ``x``
    (needed when the options have ``back_projection``)."""
    if options.back_projection and x is None:
        raise PixelNNError("these outputs were back-projected onto their input: recompose needs the input x")
    return dict(color=options.color, vote=options.vote_size or 1, highpass_sigma=options.highpass_sigma or 0.0,
                chroma_weight=1.0 if options.chroma_weight is None else options.chroma_weight,
                region_blend=options.region_blend, seam_blend=options.seam_blend,
                back_projection_input=x if options.back_projection else None)


def recompose(stage1: np.ndarray, store: Any, exemplar: np.ndarray, source_y: np.ndarray, source_x: np.ndarray,
              color: str = "rgb", vote: int = 1, highpass_sigma: float = 0.0, chroma_weight: float = 1.0,
              region: np.ndarray | None = None, region_neighbours: Any = None,
              region_blend: float = 0.0, seam_blend: float = 0.0,
              back_projection_input: np.ndarray | None = None) -> np.ndarray:
    """Rebuild ``matched`` or ``coherent`` outputs from saved correspondences and the exemplar store alone.

    Parameters
    ----------
    stage1 : ndarray, (H, W, 3) uint8
        f(x) of the query (``stage1.png``).
    store : ExemplarStore
        The library (:class:`pixelnn.store.ExemplarStore`: its ``take("photos" | "stage1", positions)``).
    exemplar, source_y, source_x : ndarray, (O, H, W) int
        Library position and source pixel of every output pixel (``correspondences.npz``).
    color, vote, highpass_sigma, chroma_weight, seam_blend
        As given to :func:`compose_copied` (the resolved options in the synthesis ``manifest.json``).
    region, region_neighbours : ndarray, optional
        A region result's region map (H, W) and its sets' neighbours (R + 1, K), -1 padded
        (``correspondences.npz``), with its options' ``region_blend``: the borders are blended as at
        synthesis (:func:`blend_borders` on :func:`pixelnn.regions.blend_groups`).
    back_projection_input : ndarray, (s, s, 3) uint8, optional
        A superres result whose options have ``back_projection``: its input thumbnail (``input.png``); the
        outputs are then back-projected onto it last, as at synthesis (:func:`back_project`).

    Returns
    -------
    ndarray, (O, H, W, 3) uint8
        Bit-identical to the outputs of :func:`compose_copied` with the same options.
    """
    h, w, _ = stage1.shape
    p = h * w
    exemplar = np.asarray(exemplar)
    used, rank = np.unique(exemplar, return_inverse=True)  # the library positions copied from
    f, residual, space = _query_and_residuals(stage1, store.take("photos", used), store.take("stage1", used), color,
                                              highpass_sigma, chroma_weight)
    rank = torch.from_numpy(rank.reshape(len(exemplar), p).astype(np.int64))
    pos = torch.from_numpy((np.asarray(source_y) * w + np.asarray(source_x)).reshape(len(exemplar), p).astype(np.int64))
    outs = f[None] + vote_residuals(residual, rank, pos, h, w, vote)
    if seam_blend > 0:
        outs = fuse_seams(outs, f, residual, rank, pos, h, w, seam_blend)
    outs = _to_rgb_uint8(outs, space).reshape(len(exemplar), h, w, 3)
    if region is not None and region_blend > 0:
        from pixelnn.regions import blend_groups

        outs = blend_borders(outs, stage1, blend_groups(region, region_neighbours), region_blend)
    if back_projection_input is not None:
        outs = back_project(outs, back_projection_input, h // np.asarray(back_projection_input).shape[0])
    return outs
