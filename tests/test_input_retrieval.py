"""Input-aware retrieval (issue 16, part 4): input descriptors, re-ranking against a brute-force truth, the
pipeline's ``input_weight`` / ``rerank_k``, and back-projection's and retrieval's options in old manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixelnn.cli import main
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import PixelNNPipeline, save_result
from pixelnn.retrieval import global_descriptors, input_descriptors, rerank

from .conftest import make_tiny_library

pytest.importorskip("faiss")


def strokes(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Edge maps (N, S, S, 1): black horizontal and vertical lines on white."""
    rng = np.random.default_rng(seed)
    x = np.full((n, size, size, 1), 255, np.uint8)
    for i in range(n):
        for _ in range(3):
            p = rng.integers(2, size - 2)
            if rng.random() < 0.5:
                x[i, p, :, 0] = 0
            else:
                x[i, :, p, 0] = 0
    return x


# ------------------------------------------------------------------------------ input descriptors
def naive_input_descriptor(x: np.ndarray, grid: int) -> np.ndarray:
    """One edge map (S, S, 1) -> its descriptor, by loops: ink, box pooling, 3x3 binomial (edge-replicated), unit norm."""
    s = x.shape[0]
    f = s // grid
    ink = 1.0 - x[..., 0].astype(np.float64) / 255.0
    pooled = np.array([[ink[i * f:(i + 1) * f, j * f:(j + 1) * f].mean() for j in range(grid)] for i in range(grid)])
    k = [0.25, 0.5, 0.25]
    out = np.zeros_like(pooled)
    for i in range(grid):
        for j in range(grid):
            out[i, j] = sum(k[a] * k[b] * pooled[min(max(i + a - 1, 0), grid - 1), min(max(j + b - 1, 0), grid - 1)]
                            for a in range(3) for b in range(3))
    v = out.reshape(-1)
    return v / np.linalg.norm(v)


def test_input_descriptors_match_a_naive_reference_and_are_unit_norm():
    x = strokes(5)
    d = input_descriptors(x, grid=8)
    assert d.shape == (5, 64) and d.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)
    for i in range(5):
        np.testing.assert_allclose(d[i], naive_input_descriptor(x[i], 8), atol=1e-5)
    blank = np.full((1, 32, 32, 1), 255, np.uint8)
    assert not input_descriptors(blank, grid=8).any()  # no ink: a zero row, similarity 0 to everything
    assert input_descriptors(x[:1], grid=5).shape == (1, 32 * 32)  # a grid that does not divide: the full side


def test_input_similarity_prefers_nearby_strokes_to_unrelated_ones():
    a = np.full((1, 96, 96, 1), 255, np.uint8)
    a[0, 40, :, 0] = 0
    near, far = a.copy(), np.full_like(a, 255)
    near[0] = np.roll(a[0], 2, axis=0)  # the same stroke 2 pixels lower
    far[0, :, 40, 0] = 0  # a vertical stroke
    d = input_descriptors(np.concatenate([a, near, far]))
    assert d[0] @ d[1] > 0.8 > 0.3 > d[0] @ d[2]


def test_a_query_and_its_candidates_are_described_alike():
    rng = np.random.default_rng(2)
    white = np.full((1, 12, 12, 3), 250, np.uint8)  # a near-blank thumbnail, like a white shoe on white
    white[0, 4:8, 4:8] = 10
    others = rng.integers(0, 256, (4, 12, 12, 3), dtype=np.uint8)
    assert input_descriptors(white).shape[1] == input_descriptors(others).shape[1] == 12 * 12 * 3


def test_non_edge_inputs_are_centred_per_image():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    brighter = np.clip(x.astype(int) + 20, 0, 255).astype(np.uint8)  # a uniform shift changes little
    d = input_descriptors(np.concatenate([x, brighter]))
    assert all(d[i] @ d[i + 3] > 0.95 for i in range(3))


def test_input_descriptors_refuse_bad_arrays():
    with pytest.raises(PixelNNError, match="input_descriptors"):
        input_descriptors(np.zeros((2, 8, 6, 1), np.uint8))
    with pytest.raises(PixelNNError, match="input_descriptors"):
        input_descriptors(np.zeros((2, 8, 8, 1), np.float32))


# ------------------------------------------------------------------------------ rerank against brute force
@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_rerank_of_every_candidate_is_the_brute_force_top_k(weight):
    rng = np.random.default_rng(1)
    n, k = 40, 7
    f_sim = rng.random(n).astype(np.float32)
    cand = rng.normal(size=(n, 16)).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    q = cand[3] + 0.1 * rng.normal(size=16).astype(np.float32)
    q /= np.linalg.norm(q)
    order = np.argsort(-f_sim)  # a search's result: f(x) similarity, largest first
    d, i = rerank(f_sim[order], order.astype(np.int64), q, cand[order], weight, k)
    truth = (1 - weight) * f_sim.astype(np.float64) + weight * (cand.astype(np.float64) @ q)
    assert i.tolist() == np.argsort(-truth, kind="stable")[:k].tolist() or np.allclose(np.sort(truth)[::-1][:k], d)
    np.testing.assert_allclose(d, truth[i], rtol=1e-5)
    assert (np.diff(d) <= 0).all()


def test_rerank_drops_padding_and_pads_its_own_result():
    sim = np.array([0.9, 0.5, -np.inf, -np.inf], np.float32)
    idx = np.array([4, 2, -1, -1], np.int64)
    cand = np.eye(2, dtype=np.float32)
    d, i = rerank(sim, idx, np.array([0.0, 1.0], np.float32), cand, 0.5, 3)
    assert i.tolist() == [2, 4, -1] and d[2] == -np.inf
    np.testing.assert_allclose(d[:2], [0.75, 0.45])


# ------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inret")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    xs = [np.asarray(x) for x in Dataset(data).split("val").inputs]
    return root, model, data, pipe, xs


def test_input_weight_zero_is_the_plain_search_and_one_ranks_by_the_inputs_alone(setup):
    root, model, data, pipe, xs = setup
    lib, x = pipe.library, xs[0]
    n = len(lib)
    plain = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid")
    zero = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid", input_weight=0)
    assert plain.options.input_weight == 0.0  # superres's default
    assert plain.neighbours.tolist() == zero.neighbours.tolist()
    f = pipe.stage1(pipe.check_input(x))
    f_sim = global_descriptors(np.asarray(lib.take("stage1", np.arange(n)))) @ global_descriptors(f[None])[0]
    assert plain.neighbours.tolist() == np.argsort(-f_sim, kind="stable")[:5].tolist()
    # w = 1 over every exemplar (rerank_k = N): the brute-force nearest inputs
    by_input = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid", input_weight=1.0, rerank_k=n)
    x_sim = input_descriptors(np.asarray(lib.take("inputs", np.arange(n)))) @ input_descriptors(x[None])[0]
    assert by_input.neighbours.tolist() == np.argsort(-x_sim, kind="stable")[:5].tolist()
    np.testing.assert_allclose(by_input.neighbour_similarity, np.sort(x_sim)[::-1][:5], rtol=1e-5)
    # a mix, among the 8 nearest by f(x) only
    mixed = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid", input_weight=0.5, rerank_k=8)
    near8 = np.argsort(-f_sim, kind="stable")[:8]
    score = 0.5 * f_sim[near8] + 0.5 * x_sim[near8]
    assert mixed.neighbours.tolist() == near8[np.argsort(-score, kind="stable")[:5]].tolist()


def test_batches_and_filters_rerank_like_single_calls(setup):
    root, model, data, pipe, xs = setup
    opts = SynthesisOptions(top_k=4, sets=[[1], [1, 2]], windows=[1], input_weight=0.7, rerank_k=12,
                            where={"kind": ["blob"]})
    allowed = set(pipe.library.select(where={"kind": ["blob"]}).tolist())
    singles = [pipe(x, opts) for x in xs[:3]]
    for exact in (True, False):
        for one, single in zip(pipe.batch(np.stack(xs[:3]), opts, exact=exact), singles):
            assert one.neighbours.tolist() == single.neighbours.tolist()
            assert set(one.neighbours.tolist()) <= allowed


def test_input_weight_is_checked_and_recorded(setup, tmp_path):
    root, model, data, pipe, xs = setup
    for bad in (-0.1, 1.5, "a"):
        with pytest.raises(PixelNNError, match="input_weight"):
            SynthesisOptions(input_weight=bad)
    with pytest.raises(PixelNNError, match="rerank_k"):
        SynthesisOptions(rerank_k=0)
    with pytest.raises(PixelNNError, match="back_projection"):
        SynthesisOptions(back_projection="yes")
    result = pipe(xs[0], input_weight=0.25, num_outputs=4)
    m = json.loads((save_result(result, tmp_path / "r", pipe.library) / "manifest.json").read_text())
    assert m["options"]["input_weight"] == 0.25 and m["options"]["back_projection"] is True
    again = pipe(xs[0], SynthesisOptions.load(tmp_path / "r" / "manifest.json"))
    assert np.array_equal(again.outputs, result.outputs)


def test_a_manifest_from_before_version_4_reads_back_as_it_was_made(tmp_path):
    old = {"format": "pixelnn-synthesis", "version": 3, "options": {"mode": "matched", "order": "score"}}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    o = SynthesisOptions.load(tmp_path / "manifest.json")
    assert o.back_projection is False and o.input_weight == 0.0 and o.order == "score"
    new = dict(old, version=4)
    (tmp_path / "manifest.json").write_text(json.dumps(new))
    o = SynthesisOptions.load(tmp_path / "manifest.json")
    assert o.back_projection is None and o.input_weight is None  # the task's defaults


def test_cli_flags_reach_the_options(setup, tmp_path, capsys):
    root, model, data, pipe, xs = setup
    from PIL import Image

    Image.fromarray(xs[0]).save(tmp_path / "x.png")
    out = tmp_path / "out"
    rc = main(["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--out", str(out), "--num-outputs", "3",
               "--input-weight", "0.4", "--rerank-k", "9", "--no-back-projection"])
    assert rc == 0
    o = json.loads((out / "x" / "manifest.json").read_text())["options"]
    assert (o["input_weight"], o["rerank_k"], o["back_projection"]) == (0.4, 9, False)
    assert main(["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--out", str(tmp_path / "o2"),
                 "--input-weight", "2"]) != 0
    assert "input_weight" in capsys.readouterr().err.replace("-", "_")
