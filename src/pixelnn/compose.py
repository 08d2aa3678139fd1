"""Composition: turn matches into output images by copying exemplars' high frequencies.

Three modes (``mode=``):

- ``"matched"`` (default, paper eq. 3): ``out_i = f_i(x) + (y_k[j] - f_j(x_k))``, the residual
  copied from the *matched* pixel j of the chosen exemplar k.
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

from typing import Sequence

import numpy as np
import torch

from pixelnn.errors import PixelNNError
from pixelnn.matching import OutputSpec

MODES = ("matched", "global", "authors")
COLORS = ("rgb", "luma")

_RGB2YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_YCC2RGB = torch.linalg.inv(_RGB2YCC)


def check_option(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise PixelNNError(f"invalid {name} {value!r}; valid: {', '.join(valid)}")


def _apply3(m: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(..., 3) x 3x3 matrix, elementwise in a fixed order (bit-reproducible for any batch shape)."""
    c = images.unbind(-1)
    return torch.stack([m[r, 0] * c[0] + m[r, 1] * c[1] + m[r, 2] * c[2] for r in range(3)], dim=-1)


def _residual_space(images: torch.Tensor, color: str) -> torch.Tensor:
    """(..., 3) float RGB -> the space residuals are taken in (RGB, or YCbCr)."""
    return images if color == "rgb" else _apply3(_RGB2YCC, images)


def _to_rgb_uint8(images: torch.Tensor, color: str) -> np.ndarray:
    rgb = images if color == "rgb" else _apply3(_YCC2RGB, images)
    return rgb.round().clamp(0, 255).to(torch.uint8).numpy()


def _residual(res: torch.Tensor, color: str) -> torch.Tensor:
    """Zero the chroma residual in luma mode."""
    if color == "luma":
        res = res.clone()
        res[..., 1:] = 0
    return res


@torch.inference_mode()
def compose(stage1: np.ndarray, ex_photos: np.ndarray, ex_stage1: np.ndarray, rank: torch.Tensor,
            pos: torch.Tensor, specs: Sequence[OutputSpec], *, mode: str = "matched", color: str = "rgb",
            best_sim: torch.Tensor | None = None, windows: Sequence[int | None] | None = None) -> np.ndarray:
    """Compose one output per spec.

    Parameters
    ----------
    stage1 : ndarray, (H, W, 3) uint8
        f(x) of the query.
    ex_photos, ex_stage1 : ndarray, (K, H, W, 3) uint8
        Photos y_k and stage-1 outputs f(x_k) of the K neighbours (in rank order).
    rank, pos : Tensor, (O, P) int64
        Per output pixel, the chosen neighbour rank and the matched flat pixel (from
        :func:`pixelnn.matching.select_sets`). Used by ``matched``.
    specs : sequence of OutputSpec
        The outputs' exemplar sets and windows (used by ``global`` and ``authors``).
    mode : {'matched', 'global', 'authors'}
    color : {'rgb', 'luma'}
    best_sim : Tensor, (K, W, P), optional
        Per-exemplar best window similarity (from :func:`pixelnn.matching.match_windows`); needed
        by ``authors``.
    windows : sequence, optional
        The windows of ``best_sim``.

    Returns
    -------
    ndarray, (O, H, W, 3) uint8
    """
    check_option("composition mode", mode, MODES)
    check_option("color", color, COLORS)
    h, w, _ = stage1.shape
    p = h * w
    f = _residual_space(torch.from_numpy(np.asarray(stage1, np.float32)).reshape(p, 3), color)  # (P, 3)
    ey = _residual_space(torch.from_numpy(np.asarray(ex_photos, np.float32)).reshape(-1, p, 3), color)  # (K, P, 3)
    ef = _residual_space(torch.from_numpy(np.asarray(ex_stage1, np.float32)).reshape(-1, p, 3), color)  # (K, P, 3)
    residual = _residual(ey - ef, color)  # (K, P, 3): high frequencies of each exemplar
    outs = torch.empty(len(specs), p, 3)
    if mode == "matched":
        flat = residual.reshape(-1, 3)  # (K*P, 3)
        outs = f[None] + flat[rank * p + pos]  # (O, P, 3)
    elif mode == "global":
        for o, spec in enumerate(specs):
            outs[o] = f + residual[list(spec.ranks)].mean(dim=0)
    else:  # authors
        if best_sim is None or windows is None:
            raise ValueError("mode 'authors' needs best_sim and windows")
        win_of = {wi: i for i, wi in enumerate(windows)}
        for o, spec in enumerate(specs):
            members = list(spec.ranks)
            weight = best_sim[members, win_of[spec.window]].clamp_min(0)  # (n, P)
            norm = weight.sum(dim=0).clamp_min(1e-8)  # (P,)
            outs[o] = f + (weight[..., None] * residual[members]).sum(dim=0) / norm[:, None]
    return _to_rgb_uint8(outs, color).reshape(len(specs), h, w, 3)


def recompose(stage1: np.ndarray, lib_photos: np.ndarray, lib_stage1: np.ndarray, exemplar: np.ndarray,
              source_y: np.ndarray, source_x: np.ndarray, color: str = "rgb") -> np.ndarray:
    """Rebuild ``matched`` outputs from saved correspondences and the library alone.

    Parameters
    ----------
    stage1 : ndarray, (H, W, 3) uint8
        f(x) of the query (``stage1.png``).
    lib_photos, lib_stage1 : ndarray, (N, H, W, 3) uint8
        The library's photos and stage-1 outputs (indexable by library position).
    exemplar, source_y, source_x : ndarray, (O, H, W) int
        Library position and source pixel of every output pixel (``correspondences.npz``).

    Returns
    -------
    ndarray, (O, H, W, 3) uint8
        Bit-identical to the outputs of :func:`compose` with ``mode="matched"``.
    """
    check_option("color", color, COLORS)
    h, w, _ = stage1.shape
    f = _residual_space(torch.from_numpy(np.asarray(stage1, np.float32)).reshape(h * w, 3), color)
    outs = []
    for e, sy, sx in zip(exemplar, source_y, source_x):
        y = torch.from_numpy(np.asarray(lib_photos[e.ravel(), sy.ravel(), sx.ravel()], np.float32))  # (P, 3)
        fk = torch.from_numpy(np.asarray(lib_stage1[e.ravel(), sy.ravel(), sx.ravel()], np.float32))
        outs.append(f + _residual(_residual_space(y, color) - _residual_space(fk, color), color))
    return _to_rgb_uint8(torch.stack(outs), color).reshape(len(outs), h, w, 3)
