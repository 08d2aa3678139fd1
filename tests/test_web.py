"""The web app: its logic without a browser, the queue under simultaneous users, and a real browser.

The browser tests drive Debian's chromium (/usr/bin/chromium, installed by .ci/run) with Playwright's
Python package; no browser is ever downloaded. They skip with a reason when gradio, playwright or
chromium is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pixelnn.cli import build_parser
from pixelnn.errors import PixelNNError
from pixelnn.library import ExemplarLibrary
from pixelnn.pipeline import PixelNNPipeline
from pixelnn.options import SynthesisOptions
from pixelnn.web import MAX_LIKE_PHOTOS, PAGE_OPTIONS, WebApp, _set_name, _window_short, parse_sets, parse_windows

from .conftest import make_dataset, make_tiny_model_dir, synthetic_photos

pytest.importorskip("faiss")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 4x4 -> 32x32 superres model with a 26-exemplar library (labels kind, shade), a photo and files."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("web")
    model = make_tiny_model_dir(root / "model")
    data = make_dataset(root / "data", n=30, seed=0)
    ExemplarLibrary.build(None, model, [data], progress=False)
    photo = root / "photo.png"
    Image.fromarray(synthetic_photos(1, 64, seed=7)[0]).save(photo)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 40)
    text = root / "notes.png"
    text.write_text("hello, I am text with an image's name\n")
    return {"root": root, "model": model, "photo": photo, "corrupt": corrupt, "text": text}


@pytest.fixture(scope="module")
def app(tiny):
    pipe = PixelNNPipeline.from_model_dir(tiny["model"], pca_dims=16)
    return WebApp(pipe, max_upload_bytes=200_000, max_upload_pixels=1_000_000, work_dir=tiny["root"] / "work")


# ---------------------------------------------------------------------------- logic, no browser
def test_serve_command_defaults_to_loopback():
    args = build_parser().parse_args(["serve", "--model", "m"])
    assert (args.host, args.port, args.device) == ("127.0.0.1", 7860, "auto")
    assert build_parser().parse_args(["serve", "--model", "m", "--device", "cuda:1"]).device == "cuda:1"


def test_options_from_page_defaults_and_every_field(app, tiny):
    base = app.options_from_page({})
    assert base == app.default_options() == SynthesisOptions(descriptor="hypercolumn", pca_dims=16)
    # the page's untouched values (empty mode fields, sets and outputs) are the defaults too
    untouched = {"mode": "coherent", "color": "rgb", "top_k": 11, "windows": "1,7,11,whole", "sets": "",
                 "patch_size": None, "vote_size": None, "highpass_sigma": None, "chroma_weight": None,
                 "descriptor": "hypercolumn", "pca_dims": 16, "num_outputs": None, "seed": 0, "order": "score",
                 "search": "default", "region_blend": 4}
    assert set(untouched) == set(PAGE_OPTIONS) and app.options_from_page(untouched) == base
    # what the page sends for empty fields: 0 from a number box, "" from a text box
    assert app.options_from_page({**untouched, "num_outputs": 0, "vote_size": "", "patch_size": 0,
                                  "highpass_sigma": " ", "chroma_weight": ""}) == base
    assert app.options_from_page({"chroma_weight": "0", "highpass_sigma": 0}).chroma_weight == 0.0  # 0 is a value
    assert app.options_from_page({"region_blend": 0}).region_blend == 0.0
    assert app.options_from_page({"region_blend": ""}).region_blend == base.region_blend
    # empty mode fields stay None, and resolve to the mode's defaults
    coherent = app.options_from_page({**untouched, "mode": "coherent"})
    assert (coherent.mode, coherent.vote_size, coherent.chroma_weight, coherent.patch_size) == ("coherent", None, None, None)
    r = app.resolved(coherent)
    assert (r.vote_size, r.chroma_weight, r.patch_size, r.highpass_sigma) == (3, 0.6, 11, 0.0)
    assert app.resolved(base) == r  # coherent is the default mode (issue 16)
    matched = app.resolved(app.options_from_page({"mode": "matched"}))
    assert matched.vote_size == 1 and matched.chroma_weight == 1.0
    page = {"mode": "coherent", "color": "luma", "top_k": 5.0, "windows": " 1, 7x7 ,whole", "sets": "1,2,1-3,#1+4",
            "patch_size": 5, "vote_size": 1, "highpass_sigma": 0.5, "chroma_weight": 0,
            "descriptor": "regressor", "pca_dims": 0, "num_outputs": 3, "seed": 4, "order": "grid", "search": "coarse"}
    got = app.options_from_page(page, {"kind": ["blob"], "shade": []}, [str(tiny["photo"])])
    assert got == SynthesisOptions(mode="coherent", color="luma", top_k=5, windows=(1, 7, None),
                                   sets=((1,), (2,), (1, 2, 3), (1, 4)), patch_size=5, vote_size=1, highpass_sigma=0.5,
                                   chroma_weight=0.0, descriptor="regressor", pca_dims=0, num_outputs=3, seed=4,
                                   order="grid", search="coarse", where={"kind": ["blob"]}, like=[str(tiny["photo"])])
    assert isinstance(got.top_k, int) and isinstance(got.vote_size, int)
    assert parse_windows("1 whole") == ("1", "whole") and parse_sets("3-4") == ((3, 4),)


@pytest.mark.parametrize("values, message", [
    ({"vote_size": 2}, "vote_size must be an odd integer >= 1, got 2"),
    ({"patch_size": 4}, "patch_size must be an odd integer >= 1, got 4"),
    ({"chroma_weight": 1.5}, "chroma_weight must be a number between 0 and 1, got 1.5"),
    ({"highpass_sigma": -1}, "highpass_sigma must be a number >= 0"),
    ({"windows": "1,seven"}, "invalid window 'seven'"),
    ({"windows": "0"}, "invalid window 0"),
    ({"windows": " , "}, "at least one window"),
    ({"sets": "1,3-1"}, "invalid exemplar set '3-1'"),
    ({"sets": "a"}, "invalid exemplar set 'a'"),
    ({"top_k": 0}, "top_k must be an integer between 1 and 10000, got 0"),
    ({"top_k": 2.5}, "top_k must be a whole number"),
    ({"num_outputs": -2}, "num_outputs must be an integer >= 1, got -2"),
    ({"vote_size": "three"}, "vote_size must be a number, got 'three'"),
    ({"pca_dims": -3}, "pca_dims must be an integer >= 0, got -3"),
    ({"seed": "x"}, "seed must be a number"),
    ({"mode": "fancy"}, "invalid composition mode 'fancy'; valid: matched, coherent"),
    ({"color": "cmyk"}, "invalid color 'cmyk'"),
    ({"descriptor": "sift"}, "invalid descriptor 'sift'"),
    ({"order": "best"}, "invalid order 'best'; valid: score, grid"),
    ({"vote": 3}, "unknown page option"),
])
def test_bad_option_values_give_one_line_errors(app, values, message):
    with pytest.raises(PixelNNError, match=message) as e:
        app.options_from_page(values)
    assert "\n" not in str(e.value)


def test_every_option_reaches_the_pipeline(app, tiny):
    x, _ = app.make_input("photo", photo_path=str(tiny["photo"]))
    page = {"mode": "coherent", "vote_size": 3, "windows": "1,whole", "sets": "1,1-3", "order": "grid"}
    result = app.synthesize(x, app.options_from_page(page))
    o = result.options
    assert (o.mode, o.vote_size, o.chroma_weight, o.patch_size, o.order) == ("coherent", 3, 0.6, 11, "grid")
    assert len(result.outputs) == 4  # 2 sets x 2 windows, set-major (order grid)
    assert [(s.ranks, s.window) for s in result.specs] == [((0,), 1), ((0,), None), ((0, 1, 2), 1), ((0, 1, 2), None)]
    assert "mode **coherent**" in app.summary(result, "photo", 1.0) and "vote_size 3" in app.summary(result, "photo", 1.0)
    changed = {"mode": "global", "color": "luma", "top_k": 4, "windows": "whole", "sets": "1-4,2", "highpass_sigma": 0.5,
               "chroma_weight": 0.25, "descriptor": "regressor", "pca_dims": 8, "num_outputs": 1, "seed": 1,
               "order": "score"}
    result = app.synthesize(x, app.options_from_page(changed, {"kind": ["blob"]}))
    o = result.options
    assert {k: getattr(o, k) for k in changed} == {**changed, "windows": (None,), "sets": ((1, 2, 3, 4), (2,))}
    assert len(result.neighbours) == 4 and len(result.outputs) == 1 and o.where == (("kind", ("blob",)),)
    blobs = {r["id"] for r in app.pipe.library.records if r["labels"]["kind"] == "blob"}
    assert set(result.neighbour_ids) <= blobs
    with pytest.raises(PixelNNError, match="only 2 exemplars available"):  # sets needing more than top_k
        app.synthesize(x, app.options_from_page({"top_k": 2, "sets": "3-5", "windows": "1"}))


def test_like_photos_restrict_the_exemplars(app, tiny):
    x, _ = app.make_input("photo", photo_path=str(tiny["photo"]))
    options = app.options_from_page({"windows": "1", "sets": "1-3"}, like_paths=[str(tiny["photo"])])
    assert options.like == (str(tiny["photo"]),)
    near = app.pipe.allowed_positions(options.replace(like_k=3))
    result = app.synthesize(x, options.replace(like_k=3))
    assert set(result.neighbours) == set(near) and len(near) == 3
    _, like = app.filters({}, [str(tiny["photo"])])  # the same photo as an array gives the same exemplars
    assert app.synthesize(x, options.replace(like=(), like_k=3), like_photos=like).neighbour_ids == result.neighbour_ids
    with pytest.raises(PixelNNError, match="corrupt"):
        app.options_from_page({}, like_paths=[str(tiny["corrupt"])])


def test_inputs_from_each_source(app, tiny):
    x, photo = app.make_input("photo", photo_path=str(tiny["photo"]))
    assert x.shape == (4, 4, 3) and photo.shape == (32, 32, 3)
    x, photo = app.make_input("input", input_path=str(tiny["photo"]))  # any image, resized to the input
    assert x.shape == (4, 4, 3) and photo is None
    canvas = np.zeros((64, 64, 4), np.uint8)
    canvas[10:50, 32:40] = (0, 0, 0, 255)  # one black vertical stroke on a transparent canvas
    x, _ = app.make_input("sketch", drawing={"composite": canvas, "layers": [], "background": None})
    assert x.shape == (4, 4, 3) and x[:, 0].min() == 255 and x[1:3, 2].max() < 200
    with pytest.raises(PixelNNError, match="sketch pad is empty"):
        app.make_input("sketch", drawing={"composite": np.zeros((64, 64, 4), np.uint8)})
    with pytest.raises(PixelNNError, match="upload a photo first"):
        app.make_input("photo", photo_path=None)


def test_bad_uploads_give_one_line_errors(app, tiny):
    with pytest.raises(PixelNNError, match="corrupt"):
        app.read_photo(tiny["corrupt"])
    with pytest.raises(PixelNNError, match="corrupt"):
        app.read_photo(tiny["text"])
    big = tiny["root"] / "big.png"
    Image.fromarray(np.zeros((1100, 1000, 3), np.uint8)).save(big)  # 1.1 MP > 1 MP limit, small file
    with pytest.raises(PixelNNError, match="too large"):
        app.read_photo(big)
    heavy = tiny["root"] / "heavy.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)).save(heavy)
    with pytest.raises(PixelNNError, match="limit is"):  # ~270 KB > 200 KB
        app.read_photo(heavy)


def test_filters(app, tiny):
    assert set(app.labels) == {"kind", "shade"} and sum(app.labels["kind"].values()) == 26
    where, like = app.filters({"kind": ["blob"], "shade": []}, None)
    assert where == {"kind": ["blob"]} and like is None
    _, like = app.filters({}, [str(tiny["photo"])])
    assert len(like) == 1 and like[0].shape == (32, 32, 3)
    with pytest.raises(PixelNNError, match="limit is"):
        app.filters({}, [str(tiny["photo"])] * (MAX_LIKE_PHOTOS + 1))


def test_synthesize_views_and_downloads(app, tiny):
    x, photo = app.make_input("photo", photo_path=str(tiny["photo"]))
    where, _ = app.filters({"kind": ["blob"]}, None)
    result = app.synthesize(x, where=where, seed=0)
    assert result.outputs.shape == (72, 32, 32, 3)
    blobs = {r["id"] for r in app.pipe.library.records if r["labels"]["kind"] == "blob"}
    assert set(result.neighbour_ids) <= blobs
    items = app.gallery(result)  # best first, with the faithfulness (superres: PSNR to the input) in each caption
    assert len(items) == 72 and all(np.array_equal(im, o) for (im, _), o in zip(items, result.outputs))
    assert items[0][1] == f"1: {_set_name(result.specs[0].ranks)} {_window_short(result.specs[0].window)}, " \
                          f"{result.faithfulness[0]:.1f} dB" and all(c.endswith(" dB") for _, c in items)
    grid = app.gallery(app.synthesize(x, where=where, seed=0, order="grid"))  # the authors' order, no score
    assert grid[0][1] == "1: #1 1x1" and grid[-1][1].startswith("72: #7-11") and not grid[-1][1].endswith("dB")
    out_img, cmap, thumbs, table = app.output_view(result, 70)
    assert out_img.shape == cmap.shape == (32 * app.scale, 32 * app.scale, 3)
    assert np.array_equal(out_img[::app.scale, ::app.scale], result.outputs[70])
    assert 1 <= len(thumbs) <= 5 and "share of pixels" in table and "kind=blob" in table
    import html
    import json
    import re

    data = json.loads(html.unescape(re.search(r"data-map='([^']*)'", app.hover_html(result, 70)).group(1)))
    assert data["size"] == 32 and data["ids"] == result.neighbour_ids and data["output"] == 71
    i = 9 * 32 + 5
    assert result.neighbours[data["rank"][i]] == result.exemplar[70, 9, 5]
    assert (data["sy"][i], data["sx"][i]) == (result.source_y[70, 9, 5], result.source_x[70, 9, 5])
    text, src_img, marked = app.pixel_view(result, 70, view_x=5 * app.scale + 1, view_y=9 * app.scale + 2)
    pos = int(result.exemplar[70, 9, 5])
    assert f"`{app.pipe.library.ids[pos]}`" in text and "(y=9, x=5)" in text
    assert src_img.shape == marked.shape == out_img.shape
    one = app.download(result, 70, photo=photo)
    with zipfile.ZipFile(one) as z:
        names = set(z.namelist())
        assert {"pixelnn-output-071/output_071.png", "pixelnn-output-071/correspondence_071.png",
                "pixelnn-output-071/correspondences.npz", "pixelnn-output-071/manifest.json",
                "pixelnn-output-071/photo.png"} <= names
        z.extractall(tiny["root"] / "unzipped")
    npz = np.load(tiny["root"] / "unzipped" / "pixelnn-output-071" / "correspondences.npz")
    assert np.array_equal(npz["library_position"][0], result.exemplar[70])
    from pixelnn.pipeline import subset_result

    part = subset_result(result, [3, 70])
    assert part.outputs.shape == (2, 32, 32, 3) and part.specs == [result.specs[3], result.specs[70]]
    assert np.array_equal(part.source_x[1], result.source_x[70])
    with pytest.raises(PixelNNError, match="do not exist"):
        subset_result(result, [72])
    files = app.png_files({"a": result.outputs[0], "b": result.stage1})
    assert np.array_equal(np.asarray(Image.open(files["a"])), result.outputs[0]) and files["b"].endswith("b.png")
    with zipfile.ZipFile(app.download(result, None)) as z:
        assert sum(n.endswith(".png") and "/output_" in n for n in z.namelist()) == 72


def test_empty_filters_are_an_error(app, tiny):
    x, _ = app.make_input("photo", photo_path=str(tiny["photo"]))
    with pytest.raises(PixelNNError):
        app.synthesize(x, where={"kind": ["no-such-kind"]})


# ---------------------------------------------------------------------------- regions, no browser
def _editor(side: int, *boxes: tuple[slice, slice], alpha: int = 153) -> dict:
    """The Regions editor's value: a transparent stroke layer of ``side`` x ``side`` painted in ``boxes``."""
    layer = np.zeros((side, side, 4), np.uint8)
    for ys, xs in boxes:
        layer[ys, xs] = (255, 0, 255, alpha)
    return {"background": np.full((side, side, 4), 255, np.uint8), "layers": [layer], "composite": None}


def test_mask_from_drawing(app):
    side = 32 * app.scale  # the editor's canvas: the enlarged stage-1 image
    s = app.scale
    mask = app.mask_from_drawing(_editor(side, (slice(0, 10 * s), slice(4 * s, 20 * s))))
    expect = np.zeros((32, 32), bool)
    expect[:10, 4:20] = True
    assert mask.dtype == bool and np.array_equal(mask, expect)
    # a pixel is inside when half its area is painted; the background never counts
    half = app.mask_from_drawing(_editor(side, (slice(0, s // 2), slice(0, 2 * s)), (slice(s, 2 * s), slice(0, s // 3))))
    assert half.sum() == 2 and half[0, :2].all()
    assert app.mask_from_drawing(_editor(64, (slice(0, 32), slice(0, 64)))).sum() == 16 * 32  # any canvas side
    assert np.array_equal(app.mask_from_drawing(expect.astype(np.uint8)), expect)  # an (S, S) array as is
    with pytest.raises(PixelNNError, match="the region is empty: paint it"):
        app.mask_from_drawing({"background": np.zeros((side, side, 4), np.uint8), "layers": [], "composite": None})
    with pytest.raises(PixelNNError, match="the region is empty"):
        app.mask_from_drawing(_editor(side))
    with pytest.raises(PixelNNError, match="region is empty"):
        app.mask_from_drawing(None)
    with pytest.raises(PixelNNError, match="cover no whole pixel .* wider brush"):
        app.mask_from_drawing(_editor(side, (slice(0, side), slice(0, 1))))


def test_region_from_page_and_its_errors(app, tiny):
    mask = np.zeros((32, 32), bool)
    mask[:16] = True
    r = app.region_from_page(mask, {"kind": ["blob"], "shade": []})
    assert r.where == (("kind", ("blob",)),) and not r.exemplars and not r.like
    assert np.array_equal(__import__("pixelnn.options", fromlist=["decode_mask"]).decode_mask(r.mask), mask)
    one = app.pipe.library.ids[3]
    assert app.region_from_page(mask, exemplar_id=one).exemplars == (one,)
    liked = app.region_from_page(mask, like_paths=[str(tiny["photo"])])
    kept = Path(liked.like[0])
    assert kept.is_file() and kept.parent.parent == app.work_dir and kept.read_bytes() == tiny["photo"].read_bytes()
    app._prune(max_age_s=-1)  # the download folders go; the regions' photos stay
    assert kept.is_file()
    from pixelnn.web import region_set_text

    assert region_set_text(liked) == "like photo.png" and region_set_text(r) == "kind=blob"
    with pytest.raises(PixelNNError, match="give the region an exemplar set"):
        app.region_from_page(mask, {"kind": []}, [])
    with pytest.raises(PixelNNError, match="painted region is empty"):
        app.region_from_page(np.zeros((32, 32), bool), {"kind": ["blob"]})
    with pytest.raises(PixelNNError, match="is 16x16; this model's outputs are 32x32"):
        app.region_from_page(np.ones((16, 16), bool), {"kind": ["blob"]})
    with pytest.raises(PixelNNError, match="unknown exemplar"):
        app.region_from_page(mask, exemplar_id="no-such-id")
    blob = next(r["id"] for r in app.pipe.library.records if r["labels"]["kind"] == "blob")
    with pytest.raises(PixelNNError, match=r"region \(kind=spot; exemplar .*\): .*leave no exemplars") as e:
        app.region_from_page(mask, {"kind": ["spot"]}, exemplar_id=blob)  # filters that leave nothing
    assert "\n" not in str(e.value)
    with pytest.raises(PixelNNError, match="corrupt"):
        app.region_from_page(mask, like_paths=[str(tiny["corrupt"])])


def test_regions_overlay_and_table(app):
    from pixelnn.web import region_colors

    top, left = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    top[:8], left[:, :4] = True, True
    regions = [app.region_from_page(top, {"kind": ["blob"]}), app.region_from_page(left, {"shade": ["red", "blue"]})]
    stage1 = np.full((32, 32, 3), 100, np.uint8)
    im = app.regions_overlay(stage1, regions)
    assert im.shape == (32 * app.scale, 32 * app.scale, 3)
    small = im[::app.scale, ::app.scale].astype(int)
    c1, c2 = region_colors(2).astype(int)
    assert np.array_equal(small[20, 20], [100, 100, 100])  # outside every region: stage 1 as is
    assert np.abs(small[4, 10] - (0.45 * 100 + 0.55 * c1)).max() <= 1  # inside region 1
    assert np.abs(small[4, 1] - (0.45 * 100 + 0.55 * c2)).max() <= 1  # the overlap: the later region wins
    assert np.array_equal(small[7, 10], c1) and np.array_equal(small[20, 3], c2)  # solid borders
    assert app.regions_overlay(None, []).shape == im.shape  # no stage 1 yet, no regions
    table = app.regions_table(regions)
    assert "&nbsp;1 | 224 | kind=blob |" in table and "&nbsp;2 | 128 | shade=red or blue |" in table  # pixels each one wins
    assert "No regions yet" in app.regions_table([])


def test_regions_reach_the_pipeline(app, tiny):
    """The page's regions become SynthesisOptions.regions: region pixels copy only from their own set."""
    x, _ = app.make_input("photo", photo_path=str(tiny["photo"]))
    s = app.scale
    top = app.mask_from_drawing(_editor(32 * s, (slice(0, 12 * s), slice(0, 32 * s))))
    corner = app.mask_from_drawing(_editor(32 * s, (slice(20 * s, 32 * s), slice(0, 10 * s))))
    clicked = app.pipe.library.ids[5]
    regions = [app.region_from_page(top, {"kind": ["blob"]}), app.region_from_page(corner, exemplar_id=clicked)]
    options = app.options_from_page({"windows": "1,whole"}, {"shade": ["red"]}, regions=regions)
    assert options.regions == tuple(regions) and options.where == (("shade", ("red",)),)
    result = app.synthesize(x, options)
    assert np.array_equal(result.region == 1, top) and np.array_equal(result.region == 2, corner)
    records = app.pipe.library.records
    blobs = {i for i, r in enumerate(records) if r["labels"]["kind"] == "blob"}
    reds = {i for i, r in enumerate(records) if r["labels"]["shade"] == "red"}
    assert set(np.unique(result.exemplar[:, top])) <= blobs
    assert set(np.unique(result.exemplar[:, corner])) == {app.pipe.library.ids.index(clicked)}
    assert set(np.unique(result.exemplar[:, result.region == 0])) <= reds
    # the one-exemplar region reuses it in every output; the default set (9 red exemplars) drops the 6
    # outputs whose sets need ranks 10-11
    assert len(result.outputs) == 30 and len(result.region_neighbours[0]) == 9
    text = app.summary(result, "photo", 1.0)
    assert "2 region(s)" in text and "Regions (2): default set" in text
    assert f"2 (exemplar {clicked}) 120 px, 1 exemplar(s)" in text and "1 (kind=blob) 384 px" in text
    assert "6 of the 36 outputs were dropped" in text and "Region(s) 2 have fewer exemplars" in text
    view, _, _ = app.pixel_view(result, 0, view_x=1 * s, view_y=25 * s)
    assert "(region 2)" in view and f"`{clicked}`" in view
    assert app.clicked_exemplar(result, 0, view_x=1 * s, view_y=25 * s) == clicked
    assert "(the default set)" in app.pixel_view(result, 0, view_x=20 * s, view_y=20 * s)[0]
    value = app.editor_value(result.stage1)
    assert value["layers"] == [] and np.array_equal(np.asarray(Image.open(value["background"]))[::s, ::s], result.stage1)
    with zipfile.ZipFile(app.download(result, None)) as z:
        z.extractall(tiny["root"] / "regions-zip")
    npz = np.load(tiny["root"] / "regions-zip" / "pixelnn-all" / "correspondences.npz")
    assert np.array_equal(npz["region"], result.region)
    assert app.options_from_page({}).regions == ()  # no regions: as before


# ---------------------------------------------------------------------------- the server
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 600.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout:.0f} s")


def test_simultaneous_users_are_queued(app, tiny, client_tmp):
    """Three clients submit at once: all get 72 outputs, and the pipeline never runs two at a time."""
    pytest.importorskip("gradio")
    gradio_client = pytest.importorskip("gradio_client")
    from pixelnn.web import build_ui, launch

    app.peak_active = 0
    runs_before = app.runs
    demo = build_ui(app)
    port = _free_port()
    launch(demo, app, port=port, block=False, quiet=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        photo = gradio_client.handle_file(str(tiny["photo"]))
        label_args = [[] for _ in app.labels]
        page = {**app.options_from_page({}).to_dict(), "windows": "1,7,11,whole", "sets": "", "num_outputs": 0, "search": "default",
                **{k: "" for k in ("patch_size", "vote_size", "highpass_sigma", "chroma_weight")}}
        jobs = [client.submit(photo, None, None, [], *[dict(page, seed=i)[k] for k in PAGE_OPTIONS], *label_args,
                              api_name="/synthesize_photo") for i in range(3)]
        results = [j.result(timeout=600) for j in jobs]
        for r in results:
            assert r[0].startswith("72 outputs from the photo"), r[0]
            assert len(r[3]) == 72
        assert app.runs - runs_before == 3
        assert app.peak_active == 1  # queued: never two requests inside the pipeline call at once
    finally:
        demo.close()


def test_each_page_has_its_own_file_cache(app, tiny):
    """A stopping server deletes every file it handed out; with one shared cache (Gradio's default, files named by
    their content's hash) that deleted the identical image another page was still serving."""
    pytest.importorskip("gradio")
    from gradio.route_utils import delete_files_created_by_app

    from pixelnn.web import build_ui

    first, second = build_ui(app), build_ui(app)
    assert first.pixelnn_cache != second.pixelnn_cache
    assert all(Path(b.GRADIO_CACHE) == Path(first.pixelnn_cache) for b in first.blocks.values())
    page = app.png_files({"stage1": np.full((8, 8, 3), 7, np.uint8)})["stage1"]
    a = first.move_resource_to_block_cache(page)
    b = second.move_resource_to_block_cache(page)
    assert a != b and Path(a).read_bytes() == Path(b).read_bytes()
    first.temp_file_sets.append({a})
    delete_files_created_by_app(first, age=None)  # what the first server does when it stops
    assert not Path(a).exists() and Path(b).exists()


# ---------------------------------------------------------------------------- a real browser
@contextlib.contextmanager
def serve_model(model_dir: Path, *extra: str):
    """``pixelnn serve --model model_dir`` on a free loopback port, in a subprocess: yields its URL."""
    pytest.importorskip("gradio")
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "pixelnn.cli", "serve", "--model", str(model_dir),
                             "--port", str(port), "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def open_browser(url: str, **context: Any):
    """Debian's chromium on ``url`` (skips when chromium or playwright is missing): yields the page."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium; apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with tempfile.TemporaryDirectory(prefix="pixelnn-chromium-") as profile, sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                                   headless=True, viewport={"width": 1400, "height": 1300},
                                                   **context)
        ctx.set_default_timeout(300_000)  # generous: the machine may be shared and busy
        page = ctx.new_page()
        page.goto(url)
        page.wait_for_selector("#run-photo")
        yield page
        ctx.close()


@pytest.fixture(scope="module")
def server(tiny):
    with serve_model(tiny["model"], "--max-upload-mb", "1") as url:
        yield url


@pytest.fixture(scope="module")
def browser_page(server):
    with open_browser(server, accept_downloads=True) as page:
        yield page


def _download_zip(page) -> zipfile.ZipFile:
    """Press *Download all* and open the zip that arrives."""
    page.click("#download-all")
    link = page.locator("#download-file a").first
    link.wait_for()
    with page.expect_download() as dl:
        link.click()
    return zipfile.ZipFile(dl.value.path())


def _status(page) -> str:
    return page.locator("#status").inner_text()


def _wait_status(page, text: str, timeout: float = 300_000) -> str:
    page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text, timeout=timeout)
    return _status(page)


def _upload(page, elem_id: str, path: Path) -> None:
    """Set a file on a gr.File, clearing the one it holds first."""
    box = page.locator(f"#{elem_id}")
    if box.locator("input[type=file]").count() == 0:
        box.get_by_role("button", name="Clear").click()
    box.locator("input[type=file]").set_input_files(str(path))


def _wait_gallery(page, n: int = 72) -> None:
    page.wait_for_function(
        "n => { const im = [...document.querySelectorAll('#gallery img')];"
        " return im.length >= n && im.every(i => i.complete && i.naturalWidth > 0); }", arg=n, timeout=300_000)


def test_browser_photo_sketch_and_correspondences(browser_page, tiny):
    page = browser_page
    # 1. Upload a photo, synthesize, and all 72 images arrive.
    _upload(page, "photo-file", tiny["photo"])
    _wait_status(page, "is ready")
    page.click("#run-photo")
    assert "72 outputs from the photo" in _wait_status(page, "outputs from the photo")
    _wait_gallery(page)
    assert page.locator("#stage1-view img").evaluate("i => i.naturalWidth") == 32
    # 2. Click an output: its correspondence map and contributing exemplars open.
    page.locator("#gallery img").nth(70).click()
    page.wait_for_function("document.querySelector('#contrib-table').innerText.includes('share of pixels')")
    assert "Output 71" in page.locator("#contrib-table").inner_text()
    corr = page.locator("#corr-view img")
    corr.wait_for()
    assert corr.evaluate("i => i.naturalWidth") == 32 * (384 // 32)
    page.wait_for_function("document.querySelectorAll('#contributors img').length >= 1")
    # 3. Hover over the map: a tooltip names the pixel's source; click it: the source exemplar, pixel marked.
    box = corr.bounding_box()
    corr.hover(position={"x": box["width"] * 16.5 / 32, "y": box["height"] * 8.5 / 32})  # the middle of pixel (8, 16)
    page.wait_for_function("(document.getElementById('pixelnn-tip') || {}).textContent?.includes('rank')")
    assert "output 71 (y=8, x=16) <- " in page.locator("#pixelnn-tip").inner_text()
    corr.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.7})
    page.wait_for_function("document.querySelector('#pixel-info').innerText.includes('came from exemplar')")
    assert "of output 71" in page.locator("#pixel-info").inner_text()
    page.locator("#source-view img").wait_for()
    # 4. Download everything.
    with _download_zip(page) as z:
        assert sum("/output_" in n for n in z.namelist()) == 72 and any(n.endswith("manifest.json") for n in z.namelist())
    # 5. Draw a stroke on the sketch pad and synthesize from it.
    page.get_by_role("tab", name="Sketch").click()
    page.locator("#sketch button[aria-label=Brush]").click()
    canvas = page.locator("#sketch canvas").first
    canvas.scroll_into_view_if_needed()
    b = canvas.bounding_box()
    page.mouse.move(b["x"] + b["width"] * 0.3, b["y"] + b["height"] * 0.2)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(b["x"] + b["width"] * (0.3 + 0.02 * i), b["y"] + b["height"] * (0.2 + 0.03 * i))
    page.mouse.up()
    page.click("#run-sketch")
    assert "72 outputs from the sketch" in _wait_status(page, "outputs from the sketch")
    _wait_gallery(page)


def test_browser_corrupt_upload_shows_error_then_next_request_works(browser_page, tiny):
    page = browser_page
    page.get_by_role("tab", name="Photo").click()
    _upload(page, "photo-file", tiny["corrupt"])
    assert "cannot use corrupt.png" in _wait_status(page, "Error")
    page.click("#run-photo")  # synthesizing from it says the same, and the app keeps serving
    page.wait_for_function("document.querySelectorAll('.toast-body').length >= 1")
    assert "corrupt" in _status(page)
    _upload(page, "photo-file", tiny["photo"])
    _wait_status(page, "is ready")
    page.click("#run-photo")
    _wait_status(page, "outputs from the photo")
    _wait_gallery(page)


def test_browser_options_panel(browser_page, tiny):
    """Open the Options panel, pick the coherent mode and 6 outputs: 6 outputs arrive, made as asked."""
    page = browser_page
    page.get_by_role("tab", name="Photo").click()
    page.get_by_text("Options", exact=True).click()
    page.locator("#opt-mode input").click()
    page.get_by_role("option", name="coherent").click()
    page.wait_for_function("document.querySelector('#opt-mode').innerText.includes('coherent matches')")
    page.locator("#opt-num_outputs input").fill("6")
    page.locator("#opt-seed input").fill("3")
    page.click("#run-photo")
    text = _wait_status(page, "6 outputs from the photo")
    assert "mode coherent" in text and "vote_size 3" in text and "chroma_weight 0.6" in text
    _wait_gallery(page, 6)
    assert page.locator("#gallery img").count() == 6
    page.locator("#opt-vote_size").get_by_role("textbox").fill("2")  # a bad value: one line in the page, and the app keeps serving
    page.click("#run-photo")
    assert "vote_size must be an odd integer" in _wait_status(page, "Error")
    page.locator("#opt-vote_size").get_by_role("textbox").fill("")
    page.click("#run-photo")
    _wait_status(page, "6 outputs from the photo")


def _open_regions(page) -> None:
    """Open the Regions panel (if closed) and wait for its editor's tools."""
    if not page.locator("#region-add").is_visible():
        page.get_by_text("Regions: paint", exact=False).first.click()
    page.wait_for_function("document.querySelector('#region-editor button[aria-label=Brush]')")


def _paint(page, y0: float, y1: float, x0: float, x1: float) -> None:
    """Three horizontal brush strokes on the Regions editor, in fractions of its image (a centred square of
    about 0.75 x the canvas's smaller side; a stroke must start on the image)."""
    canvas = page.locator("#region-editor canvas").first
    canvas.scroll_into_view_if_needed()
    b = canvas.bounding_box()
    side = 0.7 * min(b["width"], b["height"])
    ox, oy = b["x"] + (b["width"] - side) / 2, b["y"] + (b["height"] - side) / 2
    for y in (y0, (y0 + y1) / 2, y1):
        page.mouse.move(ox + side * x0, oy + side * y)
        page.mouse.down()
        for i in range(1, 6):
            page.mouse.move(ox + side * (x0 + (x1 - x0) * i / 5), oy + side * y)
        page.mouse.up()


def test_browser_regions(browser_page, tiny):
    """Paint two regions (a label value; the exemplar of a clicked pixel), see them listed and overlaid,
    synthesize again: the status names them and the download's region pixels copy from their own sets."""
    page = browser_page
    page.get_by_role("tab", name="Photo").click()
    if page.locator("#opt-num_outputs input").is_visible():  # after the Options test: all outputs again
        page.locator("#opt-num_outputs input").fill("")
    _upload(page, "photo-file", tiny["photo"])
    _wait_status(page, "is ready")
    page.click("#run-photo")
    _wait_status(page, "outputs from the photo")
    _wait_gallery(page, 1)
    # 1. Region 1: the top band from kind=blob.
    _open_regions(page)
    page.wait_for_function("document.querySelector('#region-overlay img')?.naturalWidth > 0")
    _paint(page, 0.1, 0.3, 0.05, 0.95)
    page.locator("#region-label-0 input").click()
    page.get_by_role("option", name="blob").click()
    page.keyboard.press("Escape")
    page.click("#region-add")
    assert "Region 1 added (kind=blob" in _wait_status(page, "Region 1 added")
    listed = page.locator("#region-list").inner_text()
    assert "kind=blob" in listed and "No regions yet" not in listed
    # 2. Region 2: click an output and a pixel; the bottom-left corner from that pixel's source exemplar.
    page.locator("#gallery img").nth(0).click()
    page.wait_for_function("document.querySelector('#contrib-table').innerText.includes('share of pixels')")
    corr = page.locator("#corr-view img")
    corr.wait_for()
    box = corr.bounding_box()
    corr.click(position={"x": box["width"] * 0.2, "y": box["height"] * 0.8})
    page.wait_for_function("document.querySelector('#region-clicked').innerText.includes('Exemplar you clicked')")
    clicked = page.locator("#region-clicked code").inner_text().strip()
    assert clicked in page.locator("#pixel-info").inner_text()
    _paint(page, 0.7, 0.9, 0.05, 0.35)
    page.click("#region-add-clicked")
    assert f"Region 2 added (exemplar {clicked}" in _wait_status(page, "Region 2 added")
    assert f"exemplar {clicked}" in page.locator("#region-list").inner_text()
    overlay = page.locator("#region-overlay img")
    assert overlay.evaluate("i => i.naturalWidth") == 32 * (384 // 32)
    # 3. Synthesize again: the regions are used, and said so.
    page.click("#region-run")
    text = _wait_status(page, "Regions (2)")
    assert "outputs from the photo" in text and "2 region(s)" in text
    assert "1 (kind=blob)" in text and f"2 (exemplar {clicked})" in text
    _wait_gallery(page, 1)
    with _download_zip(page) as z:
        npz = np.load(z.open(next(n for n in z.namelist() if n.endswith("correspondences.npz"))))
        manifest = json.loads(z.read(next(n for n in z.namelist() if n.endswith("manifest.json"))))
    region, used = npz["region"], npz["exemplar_ids"][npz["exemplar_index"]]  # used: (O, S, S) source ids
    assert (region == 1).sum() > 0 and (region == 2).sum() > 0
    assert set(np.unique(used[:, region == 2])) == {clicked}
    assert {manifest["exemplars"][i]["labels"]["kind"] for i in np.unique(used[:, region == 1])} == {"blob"}
    assert [r["pixels"] for r in manifest["regions"]] == [int((region == r).sum()) for r in range(3)]
    # 4. Remove region 2, then clear them all.
    page.locator("#region-remove-which input").click()
    page.get_by_role("option", name="2", exact=True).click()
    page.click("#region-remove")
    _wait_status(page, "Region 2 removed")
    assert clicked not in page.locator("#region-list").inner_text()
    page.click("#region-clear")
    _wait_status(page, "Regions cleared")
    assert "No regions yet" in page.locator("#region-list").inner_text()


def test_browser_empty_region_is_an_error_then_the_app_serves(browser_page, tiny):
    page = browser_page
    page.get_by_role("tab", name="Photo").click()
    _upload(page, "photo-file", tiny["photo"])
    _wait_status(page, "is ready")
    page.click("#run-photo")
    _wait_status(page, "outputs from the photo")
    _open_regions(page)
    page.click("#region-add")  # a synthesis leaves a fresh canvas: nothing painted
    assert "the region is empty" in _wait_status(page, "Error")
    page.wait_for_function("document.querySelectorAll('.toast-body').length >= 1")
    _paint(page, 0.4, 0.6, 0.3, 0.7)
    page.click("#region-add-clicked")  # painted, but no pixel clicked since the synthesis
    assert "click an output, then a pixel" in _wait_status(page, "click an output, then a pixel")
    assert "No regions yet" in page.locator("#region-list").inner_text()  # neither attempt added one
    page.click("#run-photo")  # and the app keeps serving
    _wait_status(page, "outputs from the photo")
    _wait_gallery(page, 1)
