"""Approximate search (issue 17): coherent labels found on a coarse grid of query pixels (``search="coarse"``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pixelnn import matching
from pixelnn.cli import main
from pixelnn.compose import recompose, recompose_keywords
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.matching import OutputSpec, coherent_matches, grid_pixels, window_similarities
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import MANIFEST_VERSION, PixelNNPipeline, save_result

from .conftest import make_tiny_library
from .test_coherent_matching import _shifted_scene, unit


@pytest.mark.parametrize("h, w, window, tile, stride", [(6, 6, 3, 7, 2), (9, 7, 3, 2, 2), (11, 13, 5, 3, 3),
                                                        (8, 8, 8, 3, 2), (12, 10, 1, 5, 4), (7, 9, 3, 1, 2)])
def test_strided_window_similarities_equal_the_brute_force_truth(h, w, window, tile, stride):
    g = torch.Generator().manual_seed(2)
    q = torch.nn.functional.normalize(torch.randn(h * w, 5, generator=g), dim=1)
    e = torch.nn.functional.normalize(torch.randn(2, h * w, 5, generator=g), dim=2)
    sims = window_similarities(q, e, h, w, window, tile=tile, stride=stride)
    rows, cols = grid_pixels(h, w, stride)
    grid = (rows[:, None] * w + cols[None, :]).reshape(-1)
    assert sims.shape == (2, len(grid), window * window)
    idx = matching.window_indices(h, w, window)[grid]  # (Q, T*T)
    for k in range(2):
        assert torch.allclose(sims[k], (q[grid] @ e[k].T).gather(1, idx), atol=1e-6)


def test_grid_pixels_cover_every_pixel_within_half_a_stride():
    for h, s in ((96, 2), (7, 2), (10, 3), (5, 1)):
        rows, _ = grid_pixels(h, h, s)
        assert len(rows) == -(-h // s) and rows.max() < h
        y = torch.arange(h)
        assert ((rows[y // s] - y).abs() <= s // 2).all()
    with pytest.raises(PixelNNError, match="stride"):
        grid_pixels(4, 4, 0)


def _coarse(q, ex, h, w, specs, windows, stride=2, **kw):
    outer = max(s for s in windows if s is not None)
    sims = window_similarities(q, ex, h, w, outer, stride=stride)
    return coherent_matches(q, ex, h, w, specs, windows, sims, stride=stride, **kw)


def test_coarse_search_recovers_a_noisy_shift():
    h = w = 24
    shift = (1, -2)
    q, ex = _shifted_scene(h, w, 16, shift, noise=1.0, seed=2)
    specs = [OutputSpec((0,), 7), OutputSpec((0,), None)]
    rank, pos, sim = _coarse(q, ex, h, w, specs, (1, 7, None), patch=5, smoothness=0.05)
    i = torch.arange(h * w)
    ys, xs = i // w, i % w
    truth = (ys + shift[0]) * w + (xs + shift[1])
    valid = (ys + shift[0] >= 0) & (ys + shift[0] < h) & (xs + shift[1] >= 0) & (xs + shift[1] < w)
    for o in range(len(specs)):
        assert (pos[o] == truth)[valid].float().mean() > 0.95
    assert sim.shape == (2, h * w) and torch.isfinite(sim).all()


def test_coarse_labels_are_shared_by_each_block_and_stay_in_their_set_window_and_image():
    g = torch.Generator().manual_seed(3)
    h, w, k, d, stride = 15, 18, 4, 8, 2
    q, ex = unit(torch.randn(h * w, d, generator=g)), unit(torch.randn(k, h * w, d, generator=g))
    windows = (1, 3, 5, None)
    specs = [OutputSpec((0,), 1), OutputSpec((1, 2), 3), OutputSpec((3,), 5), OutputSpec((0, 1, 2), None)]
    rank, pos, sim = _coarse(q, ex, h, w, specs, windows, stride=stride, patch=5, whole_offsets=4)
    i = torch.arange(h * w)
    ys, xs = i // w, i % w
    rows, cols = grid_pixels(h, w, stride)
    owner_y, owner_x = rows[ys // stride], cols[xs // stride]  # each pixel's grid pixel
    owner = owner_y * w + owner_x
    for o, s in enumerate(specs):
        assert set(rank[o].unique().tolist()) <= set(s.ranks)
        assert ((pos[o] >= 0) & (pos[o] < h * w)).all()
        assert torch.equal(rank[o], rank[o][owner])  # the grid pixel's exemplar ...
        dy, dx = pos[o][owner] // w - owner_y, pos[o][owner] % w - owner_x  # ... and offset, clamped to the image
        assert torch.equal(pos[o], (ys + dy).clamp(0, h - 1) * w + (xs + dx).clamp(0, w - 1))
        if s.window is not None:
            half = s.window // 2
            assert ((pos[o] // w - ys).abs() <= half).all() and ((pos[o] % w - xs).abs() <= half).all()
    with pytest.raises(PixelNNError, match="query pixels"):  # window similarities of another stride
        coherent_matches(q, ex, h, w, specs, windows, window_similarities(q, ex, h, w, 5), stride=2)


def test_stride_one_is_the_exact_search():
    g = torch.Generator().manual_seed(5)
    h, w = 12, 10
    q, ex = unit(torch.randn(h * w, 6, generator=g)), unit(torch.randn(3, h * w, 6, generator=g))
    specs = [OutputSpec((0, 1), 5), OutputSpec((2,), None)]
    sims = window_similarities(q, ex, h, w, 5)
    exact = coherent_matches(q, ex, h, w, specs, (1, 5, None), sims, patch=3)
    one = _coarse(q, ex, h, w, specs, (1, 5, None), stride=1, patch=3)
    assert all(torch.equal(a, b) for a, b in zip(exact, one))


# ------------------------------------------------------------------------------------------ options and pipeline
def test_search_option_is_checked_resolved_by_the_mode_and_read_back():
    assert SynthesisOptions().search is None
    assert SynthesisOptions(mode="coherent").resolved().search == "coarse"  # the default mode's default (issue 17)
    assert SynthesisOptions(mode="matched").resolved().search == "exact"
    assert SynthesisOptions(search="coarse").resolved().search == "coarse"
    with pytest.raises(PixelNNError, match="search.*valid: exact, coarse"):
        SynthesisOptions(search="fast")
    with pytest.raises(PixelNNError, match="not available with mode 'matched'; valid: exact"):
        SynthesisOptions(mode="matched", search="coarse").resolved()
    old = {"format": "pixelnn-synthesis", "version": 5, "options": {"mode": "coherent"}}
    assert SynthesisOptions.from_dict(old).search == "exact"  # made before approximate search


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("approx")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    return root, model, data, pipe


def test_coarse_outputs_are_explainable_recorded_and_reproduced(setup, tmp_path):
    root, model, data, pipe = setup
    x = np.asarray(Dataset(data).split("val").inputs[2])
    exact = pipe(x, search="exact")
    result = pipe(x, search="coarse")
    assert result.options.search == "coarse" and result.outputs.shape == exact.outputs.shape
    assert not np.array_equal(result.exemplar, exact.exemplar) or not np.array_equal(result.source_y, exact.source_y)
    for o, spec in enumerate(result.specs):
        assert set(np.unique(result.exemplar[o]).tolist()) <= set(result.neighbours[list(spec.ranks)].tolist())
    again = recompose(result.stage1, pipe.library, result.exemplar, result.source_y, result.source_x,
                      **recompose_keywords(result.options, x))
    assert np.array_equal(again, result.outputs)
    m = json.loads((save_result(result, tmp_path / "r", pipe.library) / "manifest.json").read_text())
    assert m["version"] == MANIFEST_VERSION and m["options"]["search"] == "coarse"
    assert np.array_equal(pipe(x, SynthesisOptions.load(tmp_path / "r" / "manifest.json")).outputs, result.outputs)


def test_cli_search_flag(setup, tmp_path, capsys):
    root, model, data, pipe = setup
    from PIL import Image

    Image.fromarray(np.asarray(Dataset(data).split("val").inputs[0])).save(tmp_path / "x.png")
    args = ["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--num-outputs", "3"]
    assert main(args + ["--out", str(tmp_path / "o"), "--search", "coarse", "--no-correspondence-maps"]) == 0
    folder = next((tmp_path / "o").glob("*/manifest.json")).parent
    assert json.loads((folder / "manifest.json").read_text())["options"]["search"] == "coarse"
    assert len(list(folder.glob("output_*.png"))) == 3 and (folder / "correspondences.npz").is_file()
    assert not list(folder.glob("correspondence_*.png"))  # the figures only on demand
    assert main(args + ["--out", str(tmp_path / "q")]) == 0  # by default they are written
    assert len(list(next((tmp_path / "q").glob("*/manifest.json")).parent.glob("correspondence_*.png"))) == 3
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "p"), "--search", "coarse", "--mode", "matched"]) != 0
    err = capsys.readouterr().err
    assert "not available with mode 'matched'" in err and "Traceback" not in err
