"""Pixel matching and composition: fast path vs a naive reference, exactness, provenance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelnn.compose import compose_authors, compose_copied, compose_global, highpass, recompose, vote_residuals
from pixelnn.errors import PixelNNError
from pixelnn.matching import (OutputSpec, coherent_matches, default_exemplar_sets, default_output_specs, match_windows,
                              match_windows_naive, nested_offsets, select_sets, window_indices, window_similarities)
from pixelnn.modes import get_mode
from pixelnn.store import ArrayStore


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_default_specs_are_the_authors_72():
    sets = default_exemplar_sets()
    assert len(sets) == 18 and sets[:10] == [(r,) for r in range(10)]
    assert sets[10:15] == [(0, 1, 2), (2, 3, 4), (4, 5, 6), (6, 7, 8), (8, 9, 10)]
    assert sets[15:] == [(0, 1, 2, 3, 4), (3, 4, 5, 6, 7), (6, 7, 8, 9, 10)]
    specs = default_output_specs()
    assert len(specs) == 72 and len(set(specs)) == 72
    assert max(max(s.ranks) for s in specs) == 10  # K = 11 neighbours


def test_window_indices_shift_inward_and_nest():
    idx3 = window_indices(6, 6, 3)
    assert sorted(idx3[0].tolist()) == [0, 1, 2, 6, 7, 8, 12, 13, 14]  # corner: shifted inward
    assert sorted(idx3[35].tolist()) == [21, 22, 23, 27, 28, 29, 33, 34, 35]
    idx5 = window_indices(6, 6, 5)
    for i in range(36):  # same pixel ⊂ 3x3 ⊂ 5x5
        assert i in idx3[i].tolist() and set(idx3[i].tolist()) <= set(idx5[i].tolist())
    with pytest.raises(PixelNNError):
        window_indices(6, 6, 7)


@pytest.mark.parametrize("h,w,chunk,windows", [(9, 9, 7, (1, 3, 5, None)), (8, 11, 100, (1, 3, 5, None)),
                                                (10, 7, 16, (None, 5, 1)), (6, 6, 5, (3,)), (5, 9, 64, (None,)),
                                                (7, 7, 3, (4, 2, 6))])
def test_fast_matching_equals_naive_reference(h, w, chunk, windows):
    g = torch.Generator().manual_seed(0)
    q = unit(torch.randn(h * w, 6, generator=g))
    e = unit(torch.randn(4, h * w, 6, generator=g))
    sim, pos = match_windows(q, e, h, w, windows, chunk=chunk)
    sim_ref, pos_ref = match_windows_naive(q.numpy(), e.numpy(), h, w, windows)
    assert np.array_equal(pos.numpy(), pos_ref)
    assert np.allclose(sim.numpy(), sim_ref, atol=1e-6)


def test_ties_resolve_to_the_lowest_index_like_the_reference():
    g = torch.Generator().manual_seed(1)
    q = torch.randint(0, 2, (8 * 8, 3), generator=g).float()  # few distinct values: many exact ties
    e = torch.randint(0, 2, (3, 8 * 8, 3), generator=g).float()
    windows = (1, 3, 5, None)
    sim, pos = match_windows(q, e, 8, 8, windows, chunk=10)
    sim_ref, pos_ref = match_windows_naive(q.numpy(), e.numpy(), 8, 8, windows)
    assert np.array_equal(pos.numpy(), pos_ref) and np.array_equal(sim.numpy(), sim_ref)


def test_nested_offsets_locate_inner_windows():
    for h, w, outer, inner in [(9, 9, 5, 3), (7, 12, 7, 1), (6, 6, 6, 4)]:
        big, small = window_indices(h, w, outer), window_indices(h, w, inner)
        off = nested_offsets(h, w, outer, inner)
        assert torch.equal(big.gather(1, off), small)
    with pytest.raises(PixelNNError):
        nested_offsets(9, 9, 3, 5)


def test_select_sets_takes_most_similar_member():
    best_sim = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]], [[0.5, 0.5]]])  # (K=3, W=1, P=2)
    best_pos = torch.tensor([[[5, 6]], [[7, 8]], [[9, 10]]])
    rank, pos, sim = select_sets(best_sim, best_pos, [OutputSpec((0, 1), None), OutputSpec((2,), None)], (None,))
    assert rank.tolist() == [[0, 1], [2, 2]]
    assert pos.tolist() == [[5, 8], [9, 10]]
    assert torch.allclose(sim, torch.tensor([[0.9, 0.8], [0.5, 0.5]]))
    tied = torch.tensor([[[0.5]], [[0.7]], [[0.7]]])  # ranks 1 and 2 tie: the lower rank wins
    rank, _, _ = select_sets(tied, best_pos[:, :, :1], [OutputSpec((0, 1, 2), None), OutputSpec((2, 1), None)], (None,))
    assert rank.tolist() == [[1], [2]]
    with pytest.raises(PixelNNError, match="needs 5 neighbours"):
        select_sets(best_sim, best_pos, [OutputSpec((4,), None)], (None,))


def _random_images(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_identical_query_reproduces_exemplar():
    """Query = exemplar, K = 1, same-pixel window: the output is the exemplar's photo, exactly."""
    size = 8
    photo, stage1 = _random_images(1, size, 0), _random_images(1, size, 1)
    desc = unit(torch.randn(size * size, 5))
    sim, pos = match_windows(desc, desc[None], size, size, (1,))
    specs = [OutputSpec((0,), 1)]
    rank, pos, _ = select_sets(sim, pos, specs, (1,))
    assert torch.equal(pos[0], torch.arange(size * size))
    out = compose_copied(stage1[0], photo, stage1, rank, pos, color="rgb")
    assert np.array_equal(out[0], photo[0])
    # luma mode copies luminance only: the output keeps f(x)'s colour, so it is not the photo
    luma = compose_copied(stage1[0], photo, stage1, rank, pos, color="luma")
    y = lambda im: im.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # noqa: E731
    assert np.abs(y(luma[0]) - y(photo[0])).mean() < np.abs(y(stage1[0]) - y(photo[0])).mean() / 3


@pytest.mark.parametrize("color,mode,vote,highpass_sigma,chroma_weight,seam_blend", [
    ("rgb", "matched", 1, 0.0, 1.0, 0.0), ("luma", "matched", 1, 0.0, 1.0, 0.0), ("rgb", "coherent", 3, 2.0, 0.5, 0.0),
    ("luma", "coherent", 5, 1.5, 1.0, 0.0), ("rgb", "matched", 1, 0.0, 1.0, 3.0), ("rgb", "coherent", 3, 0.0, 1.0, 2.0)])
def test_recompose_from_correspondences_is_exact(color, mode, vote, highpass_sigma, chroma_weight, seam_blend):
    size, k = 10, 4
    g = torch.Generator().manual_seed(3)
    q = unit(torch.randn(size * size, 6, generator=g))
    e = unit(torch.randn(k, size * size, 6, generator=g))
    lib_photos, lib_stage1 = _random_images(20, size, 1), _random_images(20, size, 2)
    neighbours = np.array([7, 3, 12, 0])
    query_stage1 = _random_images(1, size, 4)[0]
    specs = default_output_specs(sets=[(0,), (1, 2), (0, 1, 2, 3)], windows=(1, 3, None))
    win_sims = window_similarities(q, e, size, size, 3)
    sim, pos = match_windows(q, e, size, size, (1, 3, None))
    if mode == "coherent":
        rank, pos, _ = coherent_matches(q, e, size, size, specs, (1, 3, None), win_sims, patch=3)
    else:
        rank, pos, _ = select_sets(sim, pos, specs, (1, 3, None))
    outs = compose_copied(query_stage1, lib_photos[neighbours], lib_stage1[neighbours], rank, pos, color=color,
                          vote=vote, highpass_sigma=highpass_sigma, chroma_weight=chroma_weight, seam_blend=seam_blend)
    exemplar = neighbours[rank.numpy()].reshape(-1, size, size)
    sy, sx = np.divmod(pos.numpy().reshape(-1, size, size), size)
    again = recompose(query_stage1, ArrayStore(lib_photos, lib_stage1), exemplar, sy, sx, color=color, vote=vote,
                      highpass_sigma=highpass_sigma, chroma_weight=chroma_weight, seam_blend=seam_blend)
    assert np.array_equal(outs, again)


def test_patch_vote_agrees_inside_a_coherent_copy_and_blends_at_seams():
    size = 8
    residual = torch.randn(2, size * size, 3, generator=torch.Generator().manual_seed(8))
    ident = torch.arange(size * size)[None]
    one_copy = vote_residuals(residual, torch.zeros_like(ident), ident, size, size, 3)
    assert torch.allclose(one_copy[0], residual[0], atol=1e-6)  # every vote of a coherent copy is the pixel's own
    # left half from exemplar 0, right half from exemplar 1 (both at the same positions): pixels next to the
    # seam average the two exemplars' residuals, pixels two columns away do not
    rank = (ident % size >= size // 2).long()
    voted = vote_residuals(residual, rank, ident, size, size, 3).view(size, size, 3)
    y, x = 3, size // 2 - 1  # last column of the left half
    i = y * size + x
    expected = (6 * residual[0, i] + 3 * residual[1, i]) / 9
    assert torch.allclose(voted[y, x], expected, atol=1e-5)
    assert torch.allclose(voted[y, 1], residual[0, y * size + 1], atol=1e-6)
    with pytest.raises(PixelNNError, match="odd"):
        vote_residuals(residual, rank, ident, size, size, 2)


def test_chroma_weight_moves_colour_part_of_the_way():
    size = 4
    stage1 = np.full((1, size, size, 3), 128, np.uint8)
    photo = np.zeros((1, size, size, 3), np.uint8)
    photo[..., 0] = 200  # a red exemplar whose stage-1 guess was grey
    rank = torch.zeros(1, size * size, dtype=torch.int64)
    pos = torch.arange(size * size)[None]
    full = compose_copied(stage1[0], photo, stage1, rank, pos).astype(int)
    half = compose_copied(stage1[0], photo, stage1, rank, pos, chroma_weight=0.5).astype(int)
    none = compose_copied(stage1[0], photo, stage1, rank, pos, color="luma").astype(int)
    assert np.array_equal(full[0], photo[0])
    redness = [int(o[0, 0, 0, 0] - o[0, 0, 0, 1]) for o in (none, half, full)]
    assert redness[0] < redness[1] < redness[2] and abs(redness[1] - (redness[0] + redness[2]) / 2) <= 2
    with pytest.raises(PixelNNError, match="chroma_weight"):
        compose_copied(stage1[0], photo, stage1, rank, pos, chroma_weight=1.5)


def test_highpass_removes_a_constant_colour_offset_and_keeps_fine_detail():
    size = 32
    fine = torch.zeros(1, size, size, 3)
    fine[:, ::2] = 10.0  # stripes of period 2
    offset = torch.full((1, size, size, 3), 40.0)
    out = highpass(fine + offset, sigma=3.0)
    assert out.mean().abs() < 0.5  # the colour shift (and the stripes' mean) is gone
    assert (out[0, ::2] - out[0, 1::2]).mean() == pytest.approx(10.0, abs=0.5)  # the stripes stay
    assert torch.equal(highpass(fine, 0.0), fine)


def test_global_and_authors_modes():
    size = 6
    photos, stage1s = _random_images(2, size, 5), _random_images(2, size, 6)
    query = _random_images(1, size, 7)[0]
    specs = [OutputSpec((0,), None), OutputSpec((0, 1), None)]
    out = compose_global(query, photos, stage1s, specs)
    expected = np.clip(np.round(query.astype(np.float32) + photos[0] - stage1s[0]), 0, 255)
    assert np.array_equal(out[0], expected.astype(np.uint8))  # eq. 2
    best_sim = torch.stack([torch.full((1, size * size), 1.0), torch.full((1, size * size), 0.0)])  # (K, W, P)
    out = compose_authors(query, photos, stage1s, specs, best_sim, (None,))
    # exemplar 1 has weight 0: the set's output equals exemplar 0's co-located residual
    assert np.array_equal(out[1], expected.astype(np.uint8))
    with pytest.raises(PixelNNError, match="valid: matched, coherent, global, authors"):
        get_mode("nope")


def test_fuse_seams_gives_a_seam_the_pieces_own_steps():
    """Two exemplars, each a horizontal ramp of slope 2 plus its own offset (0 and 40), copied in place on
    either side of a vertical seam: fused, the step across the seam is the ramp's 2, not the offsets' jump,
    and every non-seam step far from it is unchanged."""
    from pixelnn.compose import fuse_seams

    h, w = 8, 40
    xx = torch.arange(w, dtype=torch.float32)[None].expand(h, w)
    residual = torch.stack([2 * xx, 2 * xx + 40]).reshape(2, h * w, 1).expand(2, h * w, 3).contiguous()
    pix = torch.arange(h * w)
    rank = (pix % w >= 20).long()[None]  # the right half copies exemplar 1
    outs = residual[rank[0], pix][None].clone()  # (1, P, 3), f = 0
    fused = fuse_seams(outs, torch.zeros(h * w, 3), residual, rank, pix[None], h, w, 4.0).reshape(h, w, 3)
    assert torch.allclose(fused[:, 20] - fused[:, 19], torch.full((h, 3), 2.0), atol=1e-3)
    before = outs.reshape(h, w, 3)
    assert torch.allclose(fused[:, 1:3] - fused[:, 0:2], before[:, 1:3] - before[:, 0:2], atol=0.05)
    same = fuse_seams(outs, torch.zeros(h * w, 3), residual, torch.zeros_like(rank), pix[None], h, w, 4.0)
    assert torch.equal(same, outs)  # one copy: no seam, nothing changes
