"""Region-level control (issue 14): options, masks, provenance, recompose, the CLI's ``--region``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pixelnn.cli import main
from pixelnn.compose import blend_borders, border_correction, recompose, recompose_keywords
from pixelnn.data.dataset import Dataset
from pixelnn.errors import PixelNNError
from pixelnn.io import save_image
from pixelnn.matching import match_windows
from pixelnn.options import Region, SynthesisOptions, decode_mask
from pixelnn.pipeline import PixelNNPipeline, save_result
from pixelnn.regions import border_pixels, load_mask, parse_region, region_map, set_ranks

from .conftest import make_tiny_library

S = 32  # the tiny model's output size


def masks():
    top = np.zeros((S, S), bool)
    top[:14] = True
    left = np.zeros((S, S), bool)
    left[:, :11] = True
    return top, left


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pytest.importorskip("faiss")
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("regions")
    model, data = make_tiny_library(root)
    pipe = PixelNNPipeline.from_model_dir(model, pca_dims=16, device="cpu")
    x = np.asarray(Dataset(data).split("val").inputs[0])
    return root, model, pipe, x


# ---------------------------------------------------------------------------------------------- options
def test_options_round_trip_with_regions(tmp_path):
    top, _ = masks()
    o = SynthesisOptions(mode="coherent", where={"kind": ["spot"]},
                         regions=[(top, {"where": {"kind": ["blob"]}}), ("eye.png", {"exemplars": ["a1", "a2"]}),
                                  {"mask": "nose.png", "like": ["photo.jpg"]}])
    assert [type(r) for r in o.regions] == [Region] * 3
    assert SynthesisOptions.from_dict(json.loads(o.to_json())) == o
    assert np.array_equal(decode_mask(o.regions[0].mask), top)
    assert o.regions[1].exemplars == ("a1", "a2") and o.regions[2].like == ("photo.jpg",)
    assert SynthesisOptions(regions=(top, {"exemplars": ["a1"]})).regions[0].exemplars == ("a1",)  # one pair alone
    assert SynthesisOptions().to_dict()["regions"] == []


def test_bad_regions_are_one_line_errors():
    for bad, match in [(("m.png", {}), "no exemplar set"), (("m.png", {"labels": 1}), "valid: mask, where"),
                       ("m.png", "a region must be"), ((np.zeros((2, 3, 4)), {"exemplars": ["a"]}), "bool array")]:
        with pytest.raises(PixelNNError, match=match) as e:
            SynthesisOptions(regions=[bad])
        assert "\n" not in str(e.value)


def test_masks_and_region_map(tmp_path):
    top, left = masks()
    regions = [Region(top, exemplars=["a"]), Region(left, exemplars=["b"])]
    rmap = region_map(regions, S)
    assert rmap.dtype == np.int16 and rmap[0, 0] == 2 and rmap[0, 20] == 1 and rmap[20, 20] == 0  # later wins
    assert ((rmap == 2) == left).all()
    png = tmp_path / "top.png"
    Image.fromarray(top.astype(np.uint8) * 200).save(png)
    assert np.array_equal(load_mask(png, S), top)
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[..., 2] = top * 7  # nonzero in any channel = inside
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert np.array_equal(load_mask(tmp_path / "rgb.png", S), top)
    border = border_pixels(rmap)
    assert border[13, 20] and border[14, 20] and not border[20, 20] and border[20, 10] and border[20, 11]


def test_bad_masks_are_one_line_errors(tmp_path):
    Image.fromarray(np.zeros((S, S), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "text.png").write_text("not an image")
    cases = [(tmp_path / "empty.png", "empty"), (tmp_path / "small.png", "is 16x16; this model's outputs are 32x32"),
             (tmp_path / "text.png", "not an image"), (tmp_path / "missing.png", "no such mask file"),
             (np.zeros((S, S), bool), "empty"), (np.ones((8, 8), bool), "8x8")]
    for mask, match in cases:
        with pytest.raises(PixelNNError, match=match) as e:
            load_mask(mask, S)
        assert "\n" not in str(e.value) and "S x S" in str(e.value)


def test_parse_region_flag():
    assert parse_region("m.png:Subcategory=Sneakers") == Region("m.png", where={"Subcategory": ["Sneakers"]})
    assert parse_region("m.png:like=a.jpg,b.jpg").like == ("a.jpg", "b.jpg")
    assert parse_region("m.png:exemplars=x1, x2").exemplars == ("x1", "x2")
    assert parse_region("dir:x/m.png:kind=blob").mask == "dir:x/m.png"  # the first ':' followed by KEY=VALUE
    for bad in ("m.png", "m.png:kind=", "m.png:where=kind=blob"):
        with pytest.raises(PixelNNError, match="--region"):
            parse_region(bad)


def test_match_windows_on_a_subset_of_pixels_equals_the_full_pass():
    g = torch.Generator().manual_seed(0)
    h = w = 12
    q = torch.nn.functional.normalize(torch.randn(h * w, 8, generator=g), dim=1)
    ex = torch.nn.functional.normalize(torch.randn(3, h * w, 8, generator=g), dim=2)
    windows = (1, 3, 5, None)
    full_sim, full_pos = match_windows(q, ex, h, w, windows, chunk=50)
    pix = torch.tensor([0, 5, 17, 60, 61, 143])
    sim, pos = match_windows(q, ex, h, w, windows, chunk=4, pixels=pix)
    assert sim.shape == (3, 4, 6)
    assert torch.equal(pos, full_pos[:, :, pix]) and torch.allclose(sim, full_sim[:, :, pix])


def _dense_border_correction(r: np.ndarray, region: np.ndarray, width: float, gain: float) -> np.ndarray:
    """Naive reference: minimise sum_pairs (c_i - c_j - t_ij)^2 + sum c^2 / width^2 by a dense solve."""
    h, w, ch = r.shape
    p = h * w
    a = np.eye(p) / width ** 2
    b = np.zeros((p, ch))
    for y in range(h):
        for x in range(w):
            for yy, xx in ((y, x + 1), (y + 1, x)):
                if yy >= h or xx >= w:
                    continue
                i, j = y * w + x, yy * w + xx
                t = gain * (r[yy, xx] - r[y, x]) if region[y, x] != region[yy, xx] else 0.0
                # d/dc of (c_i - c_j - t)^2: rows i and j of the normal equations
                a[i, i] += 1; a[j, j] += 1; a[i, j] -= 1; a[j, i] -= 1
                b[i] += t; b[j] -= t
    return np.linalg.solve(a, b).reshape(h, w, ch)


def test_border_correction_matches_a_dense_solve_and_takes_out_a_straight_step():
    rng = np.random.default_rng(0)
    region = np.zeros((7, 9), np.int16)
    region[:, 5:] = 1
    region[4:, :3] = 2
    r = rng.normal(size=(7, 9, 2))
    width = 2.5
    screen = 1 / width ** 2
    q = 1 + screen / 2 - np.sqrt(screen + screen ** 2 / 4)  # c = A q^k across a straight border
    c = border_correction(torch.from_numpy(r), region, width).numpy()
    np.testing.assert_allclose(c, _dense_border_correction(r, region, width, (3 - q + screen) / 2), atol=1e-10)
    step = np.zeros((6, 40, 1))  # a straight border between two flat residuals: the step goes entirely
    step[:, 20:] = 10.0
    half = np.zeros((6, 40), np.int16)
    half[:, 20:] = 1
    out = step + border_correction(torch.from_numpy(step), half, 4.0).numpy()
    np.testing.assert_allclose(out[:, 20] - out[:, 19], 0, atol=1e-3)  # of a step of 10 (the far ends: q^20)
    assert abs(out[0, 19, 0] - 5) < 0.01  # both sides meet half-way ...
    assert abs(out[0, 0, 0]) < 0.1 and abs(out[0, 39, 0] - 10) < 0.1  # ... and 5 widths away they are as they were


def test_blend_borders_changes_only_what_is_near_a_border():
    rng = np.random.default_rng(1)
    s = 40
    stage1 = rng.integers(60, 200, (s, s, 3)).astype(np.uint8)
    region = np.zeros((s, s), np.int16)
    region[:, 24:] = 1
    outs = np.clip(stage1.astype(int) + np.where(region[..., None] == 1, 30, -30) + rng.integers(-3, 4, (2, s, s, 3)),
                   0, 255).astype(np.uint8)
    blended = blend_borders(outs, stage1, region, 3.0)
    assert blended.dtype == np.uint8 and blended.shape == outs.shape
    res = lambda im: im.astype(int) - stage1  # noqa: E731 (f(x)'s own step across the border stays)
    step = lambda im: np.abs(res(im)[:, :, 24] - res(im)[:, :, 23]).mean()  # noqa: E731
    assert step(blended) < 0.3 * step(outs)
    far = np.abs(blended.astype(int) - outs)[:, :, :2].max()  # 22 px (7 widths) from the border
    assert far <= 1
    assert blend_borders(outs, stage1, region, 0.0) is outs
    assert blend_borders(outs, stage1, np.ones((s, s), np.int16), 3.0) is outs
    assert np.array_equal(blend_borders(outs[1:], stage1, region, 3.0), blended[1:])  # independent of the batch


# ---------------------------------------------------------------------------------------------- pipeline
@pytest.mark.parametrize("mode", ["matched", "coherent", "global", "authors"])
def test_region_pixels_come_only_from_their_set(setup, mode):
    root, model, pipe, x = setup
    lib = pipe.library
    top, left = masks()
    ids = list(lib.ids[:5])
    result = pipe(x, mode=mode, where={"kind": ["spot"]},
                  regions=[(top, {"where": {"kind": ["blob"]}}), (left, {"exemplars": ids})], sets=[[1], [1, 2, 3]],
                  windows=[1, 7, "whole"])
    rmap = region_map(result.options.regions, S)
    assert np.array_equal(result.region, rmap) and result.outputs.shape == (6, S, S, 3)
    allowed = [lib.select(where={"kind": ["spot"]}), lib.select(where={"kind": ["blob"]}), lib.select(ids=ids)]
    for s, positions in enumerate(allowed):
        used = set(np.unique(result.exemplar[:, rmap == s]).tolist())
        assert used and used <= set(positions.tolist()), f"set {s} copied from outside its exemplars"
        assert used <= set(result.region_neighbours[s].tolist())
        for o, spec in enumerate(result.specs):  # and only from the output's members within that set
            n = result.region_neighbours[s]
            members = set(n[list(set_ranks(spec.ranks, len(n)))].tolist())
            assert set(np.unique(result.exemplar[o][rmap == s]).tolist()) <= members
    assert set(result.neighbours.tolist()) == set(np.concatenate(result.region_neighbours).tolist())
    assert result.neighbours[:len(result.region_neighbours[0])].tolist() == result.region_neighbours[0].tolist()


@pytest.mark.parametrize("mode", ["matched", "coherent"])
def test_recompose_of_a_region_result_is_exact_and_the_manifest_reproduces_it(setup, tmp_path, mode):
    root, model, pipe, x = setup
    top, left = masks()
    result = pipe(x, mode=mode, num_outputs=8, regions=[(top, {"where": {"kind": ["blob"]}}),
                                                        (left, {"where": {"shade": ["red"]}})])
    o = result.options
    again = recompose(result.stage1, pipe.library, result.exemplar, result.source_y, result.source_x,
                      region=result.region, region_neighbours=result.region_neighbours,
                      **recompose_keywords(o, result.input))
    assert o.region_blend > 0 and np.array_equal(again, result.outputs)
    out = save_result(result, tmp_path / "out", pipe.library)
    z = np.load(out / "correspondences.npz")
    assert np.array_equal(z["region"], result.region)
    for s, n in enumerate(result.region_neighbours):
        assert z["region_neighbours"][s, :len(n)].tolist() == n.tolist()
    from_files = recompose(np.asarray(Image.open(out / "stage1.png")), pipe.library, z["library_position"],
                           z["source_y"], z["source_x"], region=z["region"], region_neighbours=z["region_neighbours"],
                           **recompose_keywords(SynthesisOptions.load(out / "manifest.json"),
                                                np.asarray(Image.open(out / "input.png"))))
    assert np.array_equal(from_files, result.outputs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["region"] for r in manifest["regions"]] == [0, 1, 2]
    assert [r["pixels"] for r in manifest["regions"]] == [int((result.region == s).sum()) for s in range(3)]
    assert manifest["regions"][1]["where"] == {"kind": ["blob"]} and len(manifest["regions"][1]["mask_sha256"]) == 64
    reproduced = pipe(x, SynthesisOptions.load(out / "manifest.json"))  # masks inline in the options
    assert np.array_equal(reproduced.outputs, result.outputs) and np.array_equal(reproduced.region, result.region)


def test_set_ranks_wrap_a_small_set():
    assert set_ranks((0, 1, 2), 11) == (0, 1, 2)
    assert set_ranks((9,), 4) == (1,) and set_ranks((4, 5, 6), 5) == (0, 1, 4) and set_ranks((3, 4, 5, 6, 7), 1) == (0,)


@pytest.mark.parametrize("mode", ["matched", "authors"])
def test_a_one_exemplar_region_keeps_every_output(setup, tmp_path, mode):
    """"Take this region from the exemplar I clicked": a set of one still gives all 72 outputs."""
    root, model, pipe, x = setup
    top, _ = masks()
    one = str(pipe.library.ids[3])
    plain = pipe(x, mode=mode)
    result = pipe(x, mode=mode, regions=[(top, {"exemplars": [one]})])
    assert len(result.specs) == len(plain.specs) == 72
    pos = int(pipe.library.select(ids=[one])[0])
    assert (result.exemplar[:, top] == pos).all()
    assert len(np.unique(result.exemplar[:, ~top])) > 1  # the rest still varies over the default set
    manifest = json.loads((save_result(result, tmp_path / "one", pipe.library) / "manifest.json").read_text())
    assert all(o["region_exemplar_ids"][1] == [one] for o in manifest["outputs"])


def test_region_blend_smooths_only_beside_the_borders_and_zero_gives_the_bare_copies(setup):
    root, model, pipe, x = setup
    top, left = masks()
    regions = [(top, {"where": {"kind": ["blob"]}}), (left, {"where": {"shade": ["red"]}})]
    bare = pipe(x, num_outputs=8, regions=regions, region_blend=0, order="grid",  # output by output, as blended's
                back_projection=False)
    blended = pipe(x, num_outputs=8, regions=regions, order="grid", back_projection=False)  # the default, 4 px
    assert blended.options.region_blend == 4.0 and bare.options.region_blend == 0.0
    for name in ("exemplar", "source_y", "source_x", "region"):  # the provenance is the same
        assert np.array_equal(getattr(bare, name), getattr(blended, name))
    o = bare.options
    copies = recompose(bare.stage1, pipe.library, bare.exemplar, bare.source_y, bare.source_x, color=o.color,
                       vote=o.vote_size, highpass_sigma=o.highpass_sigma, chroma_weight=o.chroma_weight)
    assert np.array_equal(copies, bare.outputs)  # region_blend 0: every pixel is its source's copy
    diff = np.abs(blended.outputs.astype(int) - bare.outputs).max(axis=(0, 3))  # (S, S)
    near = border_pixels(bare.region)
    for _ in range(3):  # within 3 pixels of a border
        near = near | np.roll(near, 1, 0) | np.roll(near, -1, 0) | np.roll(near, 1, 1) | np.roll(near, -1, 1)
    assert diff[near].mean() > diff[~near].mean()
    with pytest.raises(PixelNNError, match="region_blend"):
        SynthesisOptions(region_blend=-1)


def test_a_region_with_the_default_set_changes_nothing(setup):
    """The region machinery (per-set retrieval, matching restricted to the region's pixels, merge) gives
    the plain result when every set is the same."""
    root, model, pipe, x = setup
    top, _ = masks()
    for mode in ("matched", "coherent", "authors"):
        plain = pipe(x, mode=mode, where={"kind": ["blob"]}, num_outputs=10)
        same = pipe(x, mode=mode, where={"kind": ["blob"]}, num_outputs=10,
                    regions=[(top, {"where": {"kind": ["blob"]}})])
        assert np.array_equal(plain.outputs, same.outputs) and np.array_equal(plain.exemplar, same.exemplar)
        assert np.array_equal(plain.source_y, same.source_y) and np.array_equal(plain.source_x, same.source_x)
        assert plain.region is None and same.region is not None


def test_batch_with_regions_equals_single_calls(setup):
    root, model, pipe, x = setup
    top, left = masks()
    xs = np.stack([x, np.asarray(Dataset(root / "data").split("val").inputs[1])])
    opts = SynthesisOptions(num_outputs=5, regions=[(top, {"where": {"kind": ["blob"]}})])
    for one, x_i in zip(pipe.batch(xs, opts), xs):
        single = pipe(x_i, opts)
        assert np.array_equal(one.outputs, single.outputs) and np.array_equal(one.exemplar, single.exemplar)


def test_region_errors_name_the_region(setup):
    root, model, pipe, x = setup
    top, _ = masks()
    with pytest.raises(PixelNNError, match=r"region 1 .*unknown exemplar id"):
        pipe(x, regions=[(top, {"exemplars": ["nope"]})])
    with pytest.raises(PixelNNError, match="is 8x8"):
        pipe(x, regions=[(np.ones((8, 8), bool), {"exemplars": ["a000"]})])


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_region_end_to_end(setup, tmp_path, capsys):
    root, model, pipe, x = setup
    top, left = masks()
    save_image(tmp_path / "in.png", x)
    Image.fromarray(top.astype(np.uint8) * 255).save(tmp_path / "top.png")
    Image.fromarray(left.astype(np.uint8) * 255).save(tmp_path / "left.png")
    ids = ",".join(pipe.library.ids[:3])
    out = tmp_path / "out"
    rc = main(["-q", "synthesize", str(tmp_path / "in.png"), "--model", str(model), "--out", str(out),
               "--num-outputs", "4", "--sets", "1,2,1-3", "--region", f"{tmp_path / 'top.png'}:kind=blob",
               "--region", f"{tmp_path / 'left.png'}:exemplars={ids}"])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "in" / "manifest.json").read_text())
    assert [r.get("mask_source") for r in manifest["regions"]] == [None, str(tmp_path / "top.png"),
                                                                   str(tmp_path / "left.png")]
    z = np.load(out / "in" / "correspondences.npz")
    rmap = z["region"]
    assert ((rmap == 2) == left).all() and ((rmap == 1) == (top & ~left)).all()
    blob = set(pipe.library.select(where={"kind": ["blob"]}).tolist())
    assert set(np.unique(z["library_position"][:, rmap == 1]).tolist()) <= blob
    assert set(np.unique(z["library_position"][:, rmap == 2]).tolist()) <= set(pipe.library.select(
        ids=pipe.library.ids[:3]).tolist())
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "small.png")
    for bad, match in [("small.png:kind=blob", "is 16x16"), ("top.png", "--region expects"),
                       ("nothere.png:kind=blob", "no such mask file")]:
        rc = main(["-q", "synthesize", str(tmp_path / "in.png"), "--model", str(model), "--out", str(out),
                   "--overwrite", "--region", str(tmp_path / bad)])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and match in err and len(err.splitlines()) == 1, err


def test_region_seam_rates_known_answer():
    from pixelnn.evaluation.coherence import region_seam_rates

    h = w = 8
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.zeros((h, w), np.int16)
    region[:, 4:] = 1
    ex = np.where(region == 1, 5, 3)[None]  # two exemplars, each copied in place: seams only at the border
    rates = region_seam_rates(ex, yy[None], xx[None], region, band=1)
    assert rates["crossing"] == 1.0 and rates["pairs_crossing"] == h
    assert rates["band"] == 0.0 and rates["inside"] == 0.0 and rates["pairs_band"] > 0
    assert rates["pairs_crossing"] + rates["pairs_band"] + rates["pairs_inside"] == 2 * h * (w - 1)


def test_region_colour_steps_known_answer():
    from pixelnn.evaluation.coherence import region_colour_steps

    h = w = 8
    region = np.zeros((h, w), np.int16)
    region[:, 4:] = 1
    im = np.full((2, h, w, 3), 100, np.uint8)
    im[:, :, 4:, 0] = 130  # a step of 30 in red across the border only: 10 levels mean over the channels
    steps = region_colour_steps(im, region, band=1)
    assert steps == {"crossing": 10.0, "band": 0.0, "inside": 0.0}
    im[1, 0, 0] = 103  # 2 pairs inside with a step of 3 levels in every channel, in 1 of 2 outputs
    assert region_colour_steps(im, region, band=1)["inside"] == 2 * 3 / (74 * 2)  # 74 inside pairs per output
