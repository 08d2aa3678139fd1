"""Diverse neighbours (issue 16): greedy maximal marginal relevance against a brute-force reference, and the
pipeline's ``diversity_weight`` (search, batches, filters, manifests)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pixelnn.cli import main
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.options import SynthesisOptions
from pixelnn.pipeline import MANIFEST_VERSION, PixelNNPipeline, save_result
from pixelnn.retrieval import diverse_subset, global_descriptors

from .conftest import make_tiny_library

pytest.importorskip("faiss")


def naive_mmr(rel: np.ndarray, red: np.ndarray, weight: float, k: int) -> list[int]:
    """Maximal marginal relevance by its definition, one candidate at a time (the first of equal scores wins)."""
    picked: list[int] = []
    for _ in range(min(k, len(rel))):
        best, best_score = None, None
        for i in range(len(rel)):
            if i in picked:
                continue
            penalty = max((red[i, j] for j in picked), default=0.0)
            score = (1 - weight) * rel[i] - weight * penalty
            if best_score is None or score > best_score:
                best, best_score = i, score
        picked.append(best)
    return picked


def random_problem(m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(m, 6))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.sort(rng.uniform(0.5, 1.0, m))[::-1], d @ d.T


@pytest.mark.parametrize("weight", [0.0, 0.1, 0.3, 0.5, 0.8, 1.0])
def test_diverse_subset_matches_the_definition(weight):
    for seed in range(5):
        rel, red = random_problem(17, seed)
        assert diverse_subset(rel, red, weight, 7).tolist() == naive_mmr(rel, red, weight, 7)


def test_diverse_subset_limits():
    rel, red = random_problem(9, 0)
    shuffled = np.random.default_rng(1).permutation(9)
    # weight 0: a stable sort by relevance, whatever the redundancy
    assert diverse_subset(rel[shuffled], red, 0.0, 9).tolist() == np.argsort(-rel[shuffled], kind="stable").tolist()
    # the most relevant first at any weight; k larger than M gives every row once
    for w in (0.2, 0.9):
        got = diverse_subset(rel, red, w, 20)
        assert got[0] == 0 and sorted(got.tolist()) == list(range(9))
    # two exact duplicates of the best row: a high weight skips them, weight 0 takes them
    dup = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    assert diverse_subset(np.array([0.9, 0.9, 0.9, 0.8]), dup, 0.5, 2).tolist() == [0, 3]
    assert diverse_subset(np.array([0.9, 0.9, 0.9, 0.8]), dup, 0.0, 2).tolist() == [0, 1]
    with pytest.raises(PixelNNError, match="redundancy"):
        diverse_subset(rel, red[:3], 0.5, 2)
    with pytest.raises(PixelNNError, match="weight"):
        diverse_subset(rel, red, 1.5, 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("diverse")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    xs = [np.asarray(x) for x in Dataset(data).split("val").inputs]
    return root, model, data, pipe, xs


def test_pipeline_picks_the_brute_force_diverse_set(setup):
    root, model, data, pipe, xs = setup
    lib, x = pipe.library, xs[0]
    n = len(lib)
    plain = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid")
    zero = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid", diversity_weight=0)
    assert plain.options.diversity_weight == 0.0  # the default
    assert plain.neighbours.tolist() == zero.neighbours.tolist()
    assert np.array_equal(plain.outputs, zero.outputs)
    f = pipe.stage1(pipe.check_input(x))
    f_sim = global_descriptors(np.asarray(lib.take("stage1", np.arange(n)))) @ global_descriptors(f[None])[0]
    near = np.argsort(-f_sim, kind="stable")[:10]
    d = global_descriptors(np.asarray(lib.take("stage1", near))).astype(np.float64)  # conv5 of f(x_n)
    want = near[naive_mmr(f_sim[near], d @ d.T, 0.6, 5)]
    got = pipe(x, top_k=5, sets=[[1]], windows=[1], order="grid", diversity_weight=0.6, rerank_k=10)
    assert got.neighbours.tolist() == want.tolist()
    assert got.neighbours[0] == plain.neighbours[0]  # the nearest stays first
    assert got.neighbours.tolist() != plain.neighbours.tolist()


def test_batches_filters_and_input_weight_pick_like_single_calls(setup):
    root, model, data, pipe, xs = setup
    opts = SynthesisOptions(top_k=4, sets=[[1], [1, 2]], windows=[1], diversity_weight=0.5, input_weight=0.3,
                            rerank_k=10, where={"kind": ["blob"]})
    allowed = set(pipe.library.select(where={"kind": ["blob"]}).tolist())
    singles = [pipe(x, opts) for x in xs[:3]]
    for exact in (True, False):
        for one, single in zip(pipe.batch(np.stack(xs[:3]), opts, exact=exact), singles):
            assert one.neighbours.tolist() == single.neighbours.tolist()
            assert set(one.neighbours.tolist()) <= allowed


def test_diversity_weight_is_checked_recorded_and_reproduced(setup, tmp_path, capsys):
    root, model, data, pipe, xs = setup
    for bad in (-0.1, 1.5, "a"):
        with pytest.raises(PixelNNError, match="diversity_weight"):
            SynthesisOptions(diversity_weight=bad)
    result = pipe(xs[0], diversity_weight=0.4, rerank_k=12, num_outputs=4)
    m = json.loads((save_result(result, tmp_path / "r", pipe.library) / "manifest.json").read_text())
    assert m["version"] == MANIFEST_VERSION and m["options"]["diversity_weight"] == 0.4
    again = pipe(xs[0], SynthesisOptions.load(tmp_path / "r" / "manifest.json"))
    assert np.array_equal(again.outputs, result.outputs)
    old = {"format": "pixelnn-synthesis", "version": 4, "options": {"mode": "matched"}}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert SynthesisOptions.load(tmp_path / "old.json").diversity_weight == 0.0  # made before the option
    from PIL import Image

    Image.fromarray(xs[0]).save(tmp_path / "x.png")
    rc = main(["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--out", str(tmp_path / "o"),
               "--num-outputs", "3", "--diversity-weight", "0.3"])
    assert rc == 0
    assert json.loads((tmp_path / "o" / "x" / "manifest.json").read_text())["options"]["diversity_weight"] == 0.3
    assert main(["-q", "synthesize", str(tmp_path / "x.png"), "--model", str(model), "--out", str(tmp_path / "o2"),
                 "--diversity-weight", "2"]) != 0
    assert "diversity_weight" in capsys.readouterr().err.replace("-", "_")


def test_coherent_edges_copy_more_of_the_colour_cast_by_default(setup, monkeypatch):
    """An edge map has no colour: coherent edges default to the mode's task chroma_weight, other modes and
    superres keep the mode's own, and an explicit value wins."""
    from types import SimpleNamespace

    from pixelnn.modes import get_mode

    root, model, data, pipe, xs = setup
    assert pipe.check_options(SynthesisOptions(mode="coherent")).chroma_weight == get_mode("coherent").defaults[
        "chroma_weight"] == 0.6
    assert pipe.check_options(SynthesisOptions(mode="matched")).chroma_weight == 1.0
    monkeypatch.setattr(pipe, "task", SimpleNamespace(name="edges"))
    assert pipe.check_options(SynthesisOptions(mode="coherent")).chroma_weight == 0.8
    for mode in ("matched", "global", "authors"):
        assert pipe.check_options(SynthesisOptions(mode=mode)).chroma_weight == 1.0  # the paper's full copy
    assert pipe.check_options(SynthesisOptions(chroma_weight=0.3)).chroma_weight == 0.3  # asked for: kept
