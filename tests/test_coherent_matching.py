"""Coherent matching: patch similarities + a Potts prior over (exemplar, offset) labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelnn.errors import PixelNNError
from pixelnn.evaluation.coherence import seam_rate
from pixelnn.matching import (OutputSpec, box_mean, coherent_matches, match_windows, offset_similarities,
                              select_sets, window_similarities)


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def test_box_mean_equals_clipped_average_pooling():
    maps = torch.rand(3, 13, 10, generator=torch.Generator().manual_seed(0))
    for patch in (1, 3, 5, 9):
        ref = F.avg_pool2d(maps[:, None], patch, 1, patch // 2, count_include_pad=False)[:, 0]
        assert torch.allclose(box_mean(maps, patch), ref, atol=1e-5)


def test_offset_similarities_brute_force():
    g = torch.Generator().manual_seed(1)
    h, w, d = 5, 6, 4
    q, e = unit(torch.randn(h * w, d, generator=g)), unit(torch.randn(h * w, d, generator=g))
    offsets = torch.tensor([[0, 0], [1, -2], [-4, 5]])
    got = offset_similarities(q, e, offsets, h, w)
    for v, (dy, dx) in enumerate(offsets.tolist()):
        for i in range(h * w):
            y, x = divmod(i, w)
            inside = 0 <= y + dy < h and 0 <= x + dx < w
            want = float(q[i] @ e[(y + dy) * w + x + dx]) if inside else 0.0
            assert got[v, i].item() == pytest.approx(want, abs=1e-5)


def _shifted_scene(h, w, d, shift, noise, seed):
    """Query descriptors and one exemplar that is the query moved by ``shift`` plus noise."""
    g = torch.Generator().manual_seed(seed)
    canvas = torch.randn(h + 8, w + 8, d, generator=g)
    q = canvas[4:4 + h, 4:4 + w]
    dy, dx = shift
    e = canvas[4 - dy:4 - dy + h, 4 - dx:4 - dx + w] + noise * torch.randn(h, w, d, generator=g)
    return unit(q.reshape(-1, d)), unit(e.reshape(-1, d))[None]


def _run(q, ex, h, w, specs, windows, **kw):
    outer = max(s for s in windows if s is not None)
    sims = window_similarities(q, ex, h, w, outer)
    best_sim, best_pos = match_windows(q, ex, h, w, windows)
    pixel = select_sets(best_sim, best_pos, specs, windows)
    return pixel, coherent_matches(q, ex, h, w, specs, windows, sims, **kw)


def _seams(rank, pos, h, w):
    sy, sx = np.divmod(pos.numpy().reshape(-1, h, w), w)
    return seam_rate(rank.numpy().reshape(-1, h, w), sy, sx)


def test_recovers_a_noisy_shift_where_pixel_matching_breaks_up():
    h = w = 24
    shift = (1, -2)  # exemplar pixel j = i + (1, -2) holds the query's pixel i
    q, ex = _shifted_scene(h, w, 16, shift, noise=1.6, seed=2)
    windows = (1, 7, None)
    specs = [OutputSpec((0,), 7), OutputSpec((0,), None)]
    (p_rank, p_pos, _), (c_rank, c_pos, _) = _run(q, ex, h, w, specs, windows, patch=5, smoothness=0.05)
    i = torch.arange(h * w)
    ys, xs = i // w, i % w
    truth = (ys + shift[0]) * w + (xs + shift[1])
    valid = (ys + shift[0] >= 0) & (ys + shift[0] < h) & (xs + shift[1] >= 0) & (xs + shift[1] < w)
    for o in range(len(specs)):
        pixel_right = (p_pos[o] == truth)[valid].float().mean()
        coherent_right = (c_pos[o] == truth)[valid].float().mean()
        assert pixel_right < 0.8  # the noise defeats single pixels ...
        assert coherent_right > 0.95  # ... but not patches sharing one offset
    assert (_seams(c_rank, c_pos, h, w) < 0.5 * _seams(p_rank, p_pos, h, w)).all()


def test_labels_stay_in_their_set_window_and_image():
    g = torch.Generator().manual_seed(3)
    h, w, k, d = 16, 18, 4, 8
    q, ex = unit(torch.randn(h * w, d, generator=g)), unit(torch.randn(k, h * w, d, generator=g))
    windows = (1, 3, 5, None)
    specs = [OutputSpec((0,), 1), OutputSpec((1, 2), 3), OutputSpec((3,), 5), OutputSpec((0, 1, 2), None)]
    _, (rank, pos, sim) = _run(q, ex, h, w, specs, windows, patch=3, smoothness=0.1, whole_offsets=4)
    i = torch.arange(h * w)
    for o, s in enumerate(specs):
        assert set(rank[o].unique().tolist()) <= set(s.ranks)
        assert ((pos[o] >= 0) & (pos[o] < h * w)).all()
        if s.window is not None:
            half = s.window // 2
            assert ((pos[o] // w - i // w).abs() <= half).all() and ((pos[o] % w - i % w).abs() <= half).all()
    assert torch.isfinite(sim).all() and (sim <= 1 + 1e-5).all()


def _energy(q, ex, rank, pos, h, w, patch, smoothness):
    """The documented energy, computed directly: patch similarity of each label, Potts on labels."""
    i = torch.arange(h * w)
    off = torch.stack([pos // w - i // w, pos % w - i % w], -1)  # (O, P, 2)
    total = 0.0
    for o in range(rank.shape[0]):
        unary = torch.empty(h * w)
        for p_ in range(h * w):
            s = offset_similarities(q, ex[rank[o, p_]], off[o, p_][None], h, w)  # (1, P)
            unary[p_] = box_mean(s.view(1, h, w), patch).view(-1)[p_]
        lab = rank[o] * 10_000 + (off[o, :, 0] + 100) * 200 + off[o, :, 1] + 100
        grid = lab.view(h, w)
        changes = (grid[:, 1:] != grid[:, :-1]).sum() + (grid[1:] != grid[:-1]).sum()
        total += float(unary.sum() - smoothness * changes)
    return total


def test_smoothing_never_lowers_the_objective_and_removes_seams():
    g = torch.Generator().manual_seed(4)
    h = w = 10
    q, ex = unit(torch.randn(h * w, 6, generator=g)), unit(torch.randn(2, h * w, 6, generator=g))
    windows = (1, 5)
    specs = [OutputSpec((0, 1), 5)]
    _, (r0, p0, _) = _run(q, ex, h, w, specs, windows, patch=3, smoothness=0.2, sweeps=0)
    _, (r1, p1, _) = _run(q, ex, h, w, specs, windows, patch=3, smoothness=0.2, sweeps=3)
    assert _energy(q, ex, r1, p1, h, w, 3, 0.2) >= _energy(q, ex, r0, p0, h, w, 3, 0.2) - 1e-4
    assert _seams(r1, p1, h, w)[0] < _seams(r0, p0, h, w)[0]


def test_invalid_options_are_refused():
    q, ex = unit(torch.randn(16, 4)), unit(torch.randn(1, 16, 4))
    sims = window_similarities(q, ex, 4, 4, 3)
    specs = [OutputSpec((0,), 3)]
    with pytest.raises(PixelNNError, match="patch"):
        coherent_matches(q, ex, 4, 4, specs, (1, 3), sims, patch=4)
    with pytest.raises(PixelNNError, match="finite window"):
        coherent_matches(q, ex, 4, 4, [OutputSpec((0,), 1)], (1,), None)
